"""The master's state on disk, for `udp-reader status`: the snapshot as JSON
beside the pid file (FILE.json), rewritten every second through a fresh file
renamed over it, removed when the master leaves."""

from __future__ import annotations

import json
import os
import tempfile


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
        with open(path) as f:
            ours = json.load(f).get("pid") == os.getpid()
    except (OSError, ValueError):
        return
    if ours:
        os.unlink(path)


def read(pid_file: str) -> dict:
    """The snapshot of the master named by `pid_file`. Raises OSError or
    ValueError with a sentence for the operator."""
    with open(pid_file) as f:
        pid = int(f.read().strip() or 0)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise ValueError(f"{pid_file}: no master runs as pid {pid}") from None
    with open(path_for(pid_file)) as f:
        snapshot = json.load(f)
    if snapshot.get("pid") != pid:
        raise ValueError(f"{path_for(pid_file)} is not pid {pid}'s: the master is still starting")
    return snapshot
