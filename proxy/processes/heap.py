"""Keep the garbage collector's full passes off the request path.

By the time the proxy serves, its process holds a few hundred thousand long-lived
objects (torch, transformers, pydantic models, SQLAlchemy's metadata). CPython's oldest
generation is collected whenever enough new objects have survived since the last full
pass, and each full pass walks every tracked object: measured under 500 req/s, passes of
60 to 95 ms every few seconds, on the event loop, were the proxy's whole p99 tail.
:func:`freeze_start_up_heap` moves what start-up built into the permanent generation,
which collections never walk, so a full pass only visits what came later.
"""

from __future__ import annotations

import gc


def thaw_heap() -> None:
    """On the way out: let the collector walk the frozen objects again, so that an app
    stopped inside a longer-lived process (tests start many) leaves no cycles behind."""
    gc.unfreeze()


def freeze_start_up_heap() -> None:
    """Collect once, then exempt every object alive now from later collections. Call it
    when start-up is done, and again after loading something big (a model) later."""
    gc.collect()
    gc.freeze()
