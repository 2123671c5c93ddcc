"""The master's clock: monotonic time less the time the master itself was
stopped (SIGSTOP, a frozen VM, a debugger, a swap storm).

Every deadline the master keeps measures its workers (a handler that does
not return, a worker that does not leave); a pause of the master's own must
not count against them. The loop reads the clock many times a second, so a
longer step between two readings is time the master did not run.
"""

from __future__ import annotations

import time

MAX_STEP = 2.0  # longer between two readings: the master was paused

_last = time.monotonic()
_skipped = 0.0


def now() -> float:
    global _last, _skipped
    t = time.monotonic()
    if t - _last > MAX_STEP:
        _skipped += t - _last - MAX_STEP
    _last = t
    return t - _skipped
