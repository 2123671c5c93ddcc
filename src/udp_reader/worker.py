"""A worker process of `udp-reader serve`: the user's handler on one socket.

The supervisor starts it with `python -m udp_reader.worker`, an inherited
socket and a status pipe, and speaks to it with signals:

    TERM        drain: shed the socket (unless shed already), deliver what is
                queued until it is idle, exit 0
    USR1        retire: for a socket others keep reading; deliver only what
                was already taken from the kernel, exit 0
    INT, QUIT   exit now

It writes JSON lines to the status pipe: {"ready": true} once the handler is
imported and the reader is set up, and {"stats": {...}} as it exits. When
the supervisor vanishes, the pipe breaks and the worker drains and exits.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import select
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional

from udp_reader import Reader

log = logging.getLogger("udp_reader")

CONFIG_ENV = "UDP_READER_WORKER"
EXIT_START_FAILED = 3


class HandlerError(Exception):
    """The handler named on the command line cannot be loaded."""


def load_handler(spec: str) -> Callable[..., Any]:
    """Import "package.module:attribute" and return the callable."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise HandlerError(f"handler {spec!r} must look like MODULE:CALLABLE")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as e:
        raise HandlerError(f"cannot import handler module {module_name!r}: "
                           f"{type(e).__name__}: {e}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerError(f"module {module_name!r} has no {attribute!r}") from None
    if not callable(target):
        raise HandlerError(f"handler {spec!r} is not callable")
    return target


class RateLimitedLog:
    """Logs a handler's exceptions at most once per `interval` seconds and
    says how many were left out in between."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.suppressed = 0
        self._last = -interval

    def error(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self.suppressed += 1
            return
        more = f" ({self.suppressed} more since the last report)" if self.suppressed else ""
        log.error("handler raised %s: %s%s", type(exc).__name__, exc, more,
                  exc_info=log.isEnabledFor(logging.DEBUG))
        self.suppressed = 0
        self._last = now


class Worker:
    def __init__(self, config: dict) -> None:
        self.config = config
        self.status = os.fdopen(config["status_fd"], "w", buffering=1)
        self.mode: Optional[str] = None  # why the run ends: drain, retire or fast
        self.errors = RateLimitedLog()
        self.reader: Optional[Reader] = None

    def report(self, **message: Any) -> None:
        try:
            self.status.write(json.dumps(message) + "\n")
        except OSError:
            pass  # the supervisor is gone; nothing to tell

    def leave(self, mode: str) -> None:
        if self.mode is not None and mode != "fast":
            return  # already leaving; a second ask must not cut a drain short
        self.mode = mode
        if self.reader is not None:
            self.reader.stop()

    def _watch_supervisor(self) -> None:
        """Drain when the supervisor's end of the status pipe closes."""
        poller = select.poll()
        poller.register(self.status.fileno(), select.POLLERR | select.POLLHUP)
        while not poller.poll():
            pass
        log.warning("supervisor gone; draining")
        os.kill(os.getpid(), signal.SIGTERM)

    def main(self) -> int:
        config = self.config
        for sig, mode in ((signal.SIGTERM, "drain"), (signal.SIGUSR1, "retire"),
                          (signal.SIGINT, "fast"), (signal.SIGQUIT, "fast")):
            signal.signal(sig, lambda *_, m=mode: self.leave(m))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if config["batches"]:
            # Batch columns are numpy arrays: import it before saying ready,
            # not on the first batch (a shared queue may have no other reader).
            import numpy  # noqa: F401
        try:
            handler = load_handler(config["handler"])
            self.reader = Reader(fileno=config["fd"], min_size=config["min_size"],
                                 max_size=config["max_size"], batch_size=config["batch_size"],
                                 gro=config["gro"])
        except (HandlerError, ValueError, OSError) as e:
            self.report(error=str(e))  # the supervisor tells the operator
            return EXIT_START_FAILED
        threading.Thread(target=self._watch_supervisor, daemon=True).start()
        reader, batches = self.reader, config["batches"]
        self.report(ready=True)
        run = reader.run_batches if batches else reader.run
        while self.mode is None:
            try:
                run(handler)
            except Exception as e:  # the handler's: log it and carry on
                self.errors.error(e)
        if self.mode == "fast":
            reader.close()
        else:
            self._drain(handler, batches, shed=self.mode == "drain")
        self.report(stats=reader.stats._asdict())
        return 0

    def _drain(self, handler: Callable[..., Any], batches: bool, shed: bool) -> None:
        def guarded(item: Any) -> None:
            try:
                handler(item)
            except Exception as e:
                self.errors.error(e)

        options = {"on_batch" if batches else "on_packet": guarded}
        assert self.reader is not None
        self.reader.drain(shed=shed, grace=self.config["grace"],
                          timeout=self.config["graceful_timeout"], **options)


def main() -> int:
    config = json.loads(os.environ.pop(CONFIG_ENV))
    logging.basicConfig(level=config["log_level"], stream=sys.stderr,
                        format=f"udp-reader[worker {os.getpid()}]: %(message)s")
    return Worker(config).main()


if __name__ == "__main__":
    sys.exit(main())
