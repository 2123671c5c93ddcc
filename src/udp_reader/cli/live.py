"""The live status line of `udp-reader listen`: rates on stderr."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from typing import Callable, Iterator, Optional

from udp_reader import Stats

log = logging.getLogger("udp_reader")


def _human(value: float, unit: str) -> str:
    for prefix in ("", "k", "M", "G"):
        if abs(value) < 1000:
            return f"{value:.1f} {prefix}{unit}" if prefix else f"{value:.0f} {unit}"
        value /= 1000
    return f"{value:.1f} T{unit}"


CLEAR_LINE = "\r\x1b[K"


class StatusLine:
    """Every `interval` seconds, shows rates from a Stats source on stderr:
    a line redrawn in place on a terminal, a log line otherwise. Interval 0
    shows nothing."""

    def __init__(self, stats: Callable[[], Stats], interval: Optional[float] = None) -> None:
        self._stats = stats
        self._tty = sys.stderr.isatty()
        self._interval = (1.0 if self._tty else 10.0) if interval is None else interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="status", daemon=True)
        self._started = time.monotonic()
        # The line on screen, if any. The lock keeps a redraw from landing
        # in the middle of output that aside() let through.
        self._shown = ""
        self._lock = threading.Lock()

    def __enter__(self) -> "StatusLine":
        if self._interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            if self._shown:
                sys.stderr.write("\n")  # the summary goes below the last status
                self._shown = ""

    @contextlib.contextmanager
    def aside(self) -> Iterator[None]:
        """Clears the line on screen while the caller writes to the same
        terminal, then draws it again below: a packet line never lands on
        the end of a status line."""
        with self._lock:
            if self._shown:
                sys.stderr.write(CLEAR_LINE)
                sys.stderr.flush()
            try:
                yield
            finally:
                if self._shown:
                    sys.stderr.write(self._shown)
                    sys.stderr.flush()

    def _loop(self) -> None:
        last, then = self._stats(), time.monotonic()
        while not self._done.wait(self._interval):
            now_stats, now = self._stats(), time.monotonic()
            line = self.format(last, now_stats, now - then)
            if self._tty:
                with self._lock:
                    self._shown = line
                    sys.stderr.write(CLEAR_LINE + line)
                    sys.stderr.flush()
            else:
                log.info("%s", line)
            last, then = now_stats, now

    @staticmethod
    def format(before: Stats, after: Stats, seconds: float) -> str:
        seconds = max(seconds, 1e-9)
        packets = (after.received - before.received) / seconds
        nbytes = (after.bytes - before.bytes) / seconds
        filtered = after.too_short + after.too_long
        return (f"{_human(packets, 'pkt/s')}  {_human(nbytes, 'B/s')}  "
                f"filtered {filtered}  kernel drops {after.kernel_drops}")

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def summary(self, stats: Stats, unshown: int = 0) -> str:
        """The closing line; `unshown` packets were delivered past --count
        and not shown, so they are told apart from the delivered."""
        seconds = self.elapsed()
        past = f", {unshown} taken past --count and not shown" if unshown else ""
        return (f"{stats.received} received, {stats.delivered - unshown} delivered{past}, "
                f"{stats.too_short} too short, {stats.too_long} too long, "
                f"{stats.kernel_drops} kernel drops in {seconds:.1f} s")
