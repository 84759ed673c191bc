"""The stillroom proxy, the composition root: ``gateway`` (the API edges, teacher client,
capture), ``admin`` (the admin API), ``cli`` (the ``stillroom`` command), ``processes``
(what each command composes and runs) and ``demo``."""
