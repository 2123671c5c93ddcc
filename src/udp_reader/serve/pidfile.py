"""The master's pid file.

Checked and written at start (a wrong path, a directory or a full disk is a
set-up error, found before any worker starts), but published at its path
only once the server is ready, so a second instance that fails never
touches the running one's. Written in full to a fresh, randomly named file
in the same directory (O_EXCL|O_NOFOLLOW) and synced; publishing renames it
over the path, so a planted symlink is replaced, never followed, and a disk
that filled up since start cannot fail it half-way. Once the server runs,
nothing done to the pid file stops it: a failure is a logged warning.
Removed at exit only while it still names this process.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from typing import Optional

log = logging.getLogger("udp_reader")

OLD_SUFFIX = ".oldbin"  # where an upgrading master moves its pid file (nginx's name)


class PidFile:
    def __init__(self, path: str) -> None:
        """Raises OSError (with the path) when it cannot be written."""
        self.path = path
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        # mkstemp opens with O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600.
        fd, tmp = tempfile.mkstemp(prefix=".udp-reader-", suffix=".pid",
                                   dir=os.path.dirname(os.path.abspath(path)))
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
            os.fchmod(fd, 0o644)
            os.fsync(fd)  # a full disk says so now, not at publish
        except OSError as e:
            os.unlink(tmp)
            raise OSError(e.errno, e.strerror, path) from None
        finally:
            os.close(fd)
        self._unpublished: Optional[str] = tmp

    def write(self) -> None:
        """Publish this process's pid at the path."""
        if self._unpublished is None:
            return
        tmp, self._unpublished = self._unpublished, None
        try:
            os.replace(tmp, self.path)
        except OSError as e:
            _warn("cannot publish the pid file", self.path, e)
            _unlink(tmp)

    def set_aside(self) -> None:
        """An upgrade starts: the new master will publish its own pid."""
        if self._names_us(self.path):
            try:
                os.replace(self.path, self.path + OLD_SUFFIX)
            except OSError as e:
                _warn("cannot move the pid file aside", self.path + OLD_SUFFIX, e)

    def restore(self) -> None:
        """The upgrade failed: this process is the server again."""
        if self._names_us(self.path + OLD_SUFFIX) and not os.path.lexists(self.path):
            try:
                os.replace(self.path + OLD_SUFFIX, self.path)
            except OSError as e:
                _warn("cannot restore the pid file", self.path, e)

    def remove(self) -> None:
        if self._unpublished is not None:
            _unlink(self._unpublished)
            self._unpublished = None
            return
        for candidate in (self.path, self.path + OLD_SUFFIX):
            if self._names_us(candidate):
                _unlink(candidate)

    @staticmethod
    def _names_us(path: str) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            return os.read(fd, 64).strip() == str(os.getpid()).encode()
        except OSError:
            return False  # a directory
        finally:
            os.close(fd)


def _warn(what: str, path: str, error: OSError) -> None:
    log.warning("%s %s: %s; serving on without it", what, path, error.strerror or error)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
