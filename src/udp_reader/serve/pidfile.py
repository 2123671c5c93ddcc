"""The master's pid file.

Checked at start (a wrong path is a set-up error), written only once the
server is ready, so a second instance that fails never touches the running
one's. Written through a fresh, randomly named file in the same directory
(O_EXCL|O_NOFOLLOW) renamed over the path: a planted symlink is replaced,
never followed. Removed at exit only while it still names this process.
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional, Tuple

OLD_SUFFIX = ".oldbin"  # where an upgrading master moves its pid file (nginx's name)


class PidFile:
    def __init__(self, path: str) -> None:
        self.path = path
        # mkstemp opens with O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600.
        fd, tmp = tempfile.mkstemp(prefix=".udp-reader-", suffix=".pid",
                                   dir=os.path.dirname(os.path.abspath(path)))
        self._unpublished: Optional[Tuple[int, str]] = (fd, tmp)

    def write(self) -> None:
        """Publish this process's pid at the path."""
        if self._unpublished is None:
            return
        fd, tmp = self._unpublished
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fchmod(fd, 0o644)
        os.close(fd)
        os.replace(tmp, self.path)
        self._unpublished = None

    def set_aside(self) -> None:
        """An upgrade starts: the successor will publish its own pid."""
        if self._names_us(self.path):
            os.replace(self.path, self.path + OLD_SUFFIX)

    def restore(self) -> None:
        """The upgrade failed: this process is the server again."""
        if self._names_us(self.path + OLD_SUFFIX) and not os.path.lexists(self.path):
            os.replace(self.path + OLD_SUFFIX, self.path)

    def remove(self) -> None:
        if self._unpublished is not None:
            fd, tmp = self._unpublished
            os.close(fd)
            os.unlink(tmp)
            self._unpublished = None
            return
        for candidate in (self.path, self.path + OLD_SUFFIX):
            if self._names_us(candidate):
                os.unlink(candidate)

    @staticmethod
    def _names_us(path: str) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            return os.read(fd, 64).strip() == str(os.getpid()).encode()
        finally:
            os.close(fd)

