"""A runner's placement, computed once on first request, from any number of threads.

Each backend's ``placement.py`` reads its runtime's record of the graph it runs; the
record does not change after compile, so it is read once and kept on the runner.
Framework-free: nothing here imports a runtime.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from hal.plugin import Placement

_ATTR = "_hal_placement"
_GUARD = threading.Lock()  # only to create a runner's own lock once


def once(runner: Any, compute: Callable[[], Placement | None]) -> Placement | None:
    """``compute()``'s result, kept on ``runner``: the first caller computes it under
    the runner's own lock (others wait for it), later callers read it. A failure is
    not kept: the next call tries again."""
    d = runner.__dict__
    if _ATTR in d:
        return d[_ATTR]
    with _GUARD:
        lock = d.setdefault(_ATTR + "_lock", threading.Lock())
    with lock:
        if _ATTR not in d:
            d[_ATTR] = compute()
        return d[_ATTR]
