"""A thread that calls a function every interval seconds, from start() to
stop(): the live views (listen's status line, --top) redraw with it."""

from __future__ import annotations

import threading
from typing import Callable


class Ticker:
    def __init__(self, interval: float, tick: Callable[[], None], name: str) -> None:
        self._interval = interval
        self._tick = tick
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        """Tick from now on; an interval of 0 never ticks."""
        if self._interval > 0:
            self._thread.start()

    def stop(self) -> None:
        """No tick after this returns (the one under way finishes first)."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._done.wait(self._interval):
            self._tick()
