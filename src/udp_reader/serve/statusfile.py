"""The master's state on disk, for `udp-reader status`: the snapshot as JSON
beside the pid file (FILE.json), rewritten every second through a fresh file
renamed over it, removed when the master leaves. Read through read_small(): whatever is
found at these paths, only a regular file of a bounded size is read."""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile

MAX_SIZE = 16 << 20  # bytes; the status of a thousand workers is well under 1 MiB
MAX_PID_SIZE = 64


class NotAFile(Exception):
    """The path holds something udp-reader never writes there."""


def read_small(path: str, limit: int) -> bytes:
    """The content of the regular file at `path`, at most `limit` bytes.
    Raises OSError, or NotAFile with a sentence for the operator (a device,
    a pipe, a file too large: never read to the end)."""
    # O_NONBLOCK: a FIFO planted there must not hang the open.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(mode):
            raise NotAFile(f"{path} is not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise NotAFile(f"{path} is larger than {limit:,} bytes: not a file udp-reader wrote")
    return data


def path_for(pid_file: str) -> str:
    return pid_file + ".json"


def write(path: str, snapshot: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".udp-reader-", suffix=".json",
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o644)
            json.dump(snapshot, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def remove(path: str) -> None:
    """Remove the file if it is this process's."""
    try:
        ours = json.loads(read_small(path, MAX_SIZE)).get("pid") == os.getpid()
    except (OSError, ValueError, NotAFile, AttributeError):
        return
    if ours:
        os.unlink(path)


def read(pid_file: str) -> dict:
    """The snapshot of the master named by `pid_file`. Raises OSError,
    NotAFile or ValueError with a sentence for the operator."""
    pid = int(read_small(pid_file, MAX_PID_SIZE).strip() or 0)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise ValueError(f"{pid_file}: no master runs as pid {pid}") from None
    snapshot = json.loads(read_small(path_for(pid_file), MAX_SIZE))
    if snapshot.get("pid") != pid:
        raise ValueError(f"{path_for(pid_file)} is not pid {pid}'s: the master is still starting")
    return snapshot
