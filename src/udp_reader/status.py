"""The live status line of `udp-reader listen`: rates on stderr."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Callable, Optional

from udp_reader import Stats

log = logging.getLogger("udp_reader")


def _human(value: float, unit: str) -> str:
    for prefix in ("", "k", "M", "G"):
        if abs(value) < 1000:
            return f"{value:.1f} {prefix}{unit}" if prefix else f"{value:.0f} {unit}"
        value /= 1000
    return f"{value:.1f} T{unit}"


class StatusLine:
    """Every `interval` seconds, shows rates from a Stats source on stderr:
    a line redrawn in place on a terminal, a log line otherwise."""

    def __init__(self, stats: Callable[[], Stats], interval: Optional[float] = None) -> None:
        self._stats = stats
        self._tty = sys.stderr.isatty()
        self._interval = interval or (1.0 if self._tty else 10.0)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="status", daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> "StatusLine":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()
        if self._tty:
            sys.stderr.write("\n")

    def _loop(self) -> None:
        last, then = self._stats(), time.monotonic()
        while not self._done.wait(self._interval):
            now_stats, now = self._stats(), time.monotonic()
            line = self.format(last, now_stats, now - then)
            if self._tty:
                sys.stderr.write("\r\x1b[K" + line)
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

    def summary(self, stats: Stats) -> str:
        seconds = time.monotonic() - self._started
        return (f"{stats.received} received, {stats.delivered} delivered, "
                f"{stats.too_short} too short, {stats.too_long} too long, "
                f"{stats.kernel_drops} kernel drops in {seconds:.1f} s")
