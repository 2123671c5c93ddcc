"""How long a worker may take, and what the master does past it:
--start-timeout to get ready, --timeout for a handler call (or a worker's
silence), the leave limit to retire or drain, and --max-packets before
its slot passes to a new worker. Times are the master's clock (clock.py).
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional

from udp_reader.serve import protocol
from udp_reader.serve.config import Config
from udp_reader.serve.phase import Stop
from udp_reader.serve.workers import NEVER, State, WorkerProcess

log = logging.getLogger("udp_reader")

KILL_GRACE = 2.0        # past --graceful-timeout before a leaving worker is killed
FAST_STOP = 5.0         # longest a fast stop waits before it kills


def leave_limit(config: Config, stop: Optional[Stop]) -> float:
    """How long a worker told to retire or drain has before it is killed."""
    if stop is Stop.FAST:
        return FAST_STOP
    return config.graceful_timeout + KILL_GRACE


def enforce(workers: Iterable[WorkerProcess], now: float, config: Config,
            stop: Optional[Stop]) -> None:
    """Act on every worker past its time."""
    for worker in workers:
        if worker.state is State.SERVING:
            _check_serving(worker, now, config)
        if now < worker.deadline:
            continue
        if worker.state is State.STARTING:
            worker.error = f"not ready within {config.start_timeout:g} s"
            worker.kill()
            worker.deadline = NEVER
        elif worker.state is State.LEAVING:
            log.error("%r did not leave within %g s; its stack follows, then SIGKILL",
                      worker, leave_limit(config, stop))
            worker.dump_and_kill(now)
        elif worker.state is State.KILLED:
            worker.kill()
            worker.deadline = NEVER


def _check_serving(worker: WorkerProcess, now: float, config: Config) -> None:
    """--timeout: a handler call that does not return, or a worker that
    stopped talking (its link thread starved); --max-packets."""
    timeout = config.timeout
    if timeout:
        busy = worker.stats.get("busy_for", 0)
        silent = now - worker.last_heard - protocol.STATS_INTERVAL
        if busy > timeout or silent > timeout:
            log.error("%r: its handler has not returned for %.0f s (--timeout %g); "
                      "its stack follows, then SIGKILL", worker, max(busy, silent), timeout)
            worker.dump_and_kill(now)
            return
    if worker.recycle and not worker.replace_due:
        log.info("%r handled %d packets (--max-packets); replacing it", worker,
                 worker.stats.get("delivered", 0))
        worker.replace_due = True  # its slot passes to a new worker
