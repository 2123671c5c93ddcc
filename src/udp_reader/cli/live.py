"""The live status line of `udp-reader listen`: rates on stderr."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from typing import Callable, Iterator, Optional, Tuple

from udp_reader import Stats
from udp_reader.cli.ticker import Ticker
from udp_reader.cli.units import human

log = logging.getLogger("udp_reader")

CLEAR_LINE = "\r\x1b[K"


class StatusLine:
    """Every `interval` seconds, shows rates from a Stats source on stderr:
    a line redrawn in place on a terminal, a log line otherwise. Interval 0
    shows nothing."""

    def __init__(self, stats: Callable[[], Stats], interval: Optional[float] = None) -> None:
        self._stats = stats
        self._tty = sys.stderr.isatty()
        interval = (1.0 if self._tty else 10.0) if interval is None else interval
        self._ticker = Ticker(interval, self._tick, "status")
        self._started = time.monotonic()
        self._last: Tuple[Stats, float] = (stats(), self._started)  # the last tick's
        # The line on screen, if any. The lock keeps a redraw from landing
        # in the middle of output that aside() let through.
        self._shown = ""
        self._lock = threading.Lock()

    def __enter__(self) -> "StatusLine":
        self._ticker.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._ticker.stop()
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

    def _tick(self) -> None:
        (last, then), now_stats, now = self._last, self._stats(), time.monotonic()
        line = self.format(last, now_stats, now - then)
        if self._tty:
            with self._lock:
                self._shown = line
                sys.stderr.write(CLEAR_LINE + line)
                sys.stderr.flush()
        else:
            log.info("%s", line)
        self._last = (now_stats, now)

    @staticmethod
    def format(before: Stats, after: Stats, seconds: float) -> str:
        seconds = max(seconds, 1e-9)
        packets = (after.received - before.received) / seconds
        nbytes = (after.bytes - before.bytes) / seconds
        filtered = after.too_short + after.too_long
        return (f"{human(packets, 'pkt/s')}  {human(nbytes, 'B/s')}  "
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
