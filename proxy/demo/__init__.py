"""``stillroom demo``: the whole loop on a simulated teacher and the bundled CLINC150 subset.

``teacher`` answers like a frontier model would, ``traffic`` plays an app calling it
through the proxy with the ``openai`` SDK, ``view`` shows the live state, ``report``
computes the figures from the store, and ``run`` puts them together.
"""
