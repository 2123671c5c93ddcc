"""A command on a pseudo-terminal, as a person sees it: stdout and stderr
both on the terminal, and what it writes played on a VT100 screen (pyte)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from typing import Callable

import pyte

from conftest import DEADLINE
from test_cli import COMMAND


class Terminal:
    def __init__(self, *args: str, columns: int = 120, lines: int = 50) -> None:
        controller, terminal = pty.openpty()
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env["TERM"] = "xterm"
        self.proc = subprocess.Popen([*COMMAND, *args], stdin=subprocess.DEVNULL,
                                     stdout=terminal, stderr=terminal, env=env)
        os.close(terminal)
        self._controller = controller
        self.raw = b""
        self.screen = pyte.Screen(columns, lines)
        self._stream = pyte.ByteStream(self.screen)

    def read_until(self, done: Callable[["Terminal"], bool]) -> bool:
        """Read output until done(self) holds, the command ends, or DEADLINE."""
        deadline = time.monotonic() + DEADLINE
        while not done(self) and time.monotonic() < deadline:
            if select.select([self._controller], [], [], 0.1)[0]:
                try:
                    chunk = os.read(self._controller, 65536)
                except OSError:  # EIO: the command closed the terminal
                    break
                if not chunk:
                    break
                self.raw += chunk
                self._stream.feed(chunk)
        return done(self)

    def port(self) -> int:
        """The port of the 'listening on HOST:PORT' log line."""
        pattern = re.compile(rb"listening on \S*:(\d+)\r\n")
        assert self.read_until(lambda t: pattern.search(t.raw) is not None), self.raw
        return int(pattern.search(self.raw).group(1))

    @property
    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    def finish(self, sig: int = signal.SIGINT) -> int:
        """Stop the command, read what it still writes; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.read_until(lambda t: False)  # to the end: the terminal closes with it
        try:
            return self.proc.wait(DEADLINE)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.close(self._controller)
