"""How serve's master and workers log: one line per event on standard
error, stamped with the local time (the first question after an incident)
unless standard error is the systemd journal, which stamps every line."""

from __future__ import annotations

import logging
import os
import sys


def _to_journal() -> bool:
    """True when standard error is the journal's stream (JOURNAL_STREAM)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        info = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return f"{info.st_dev}" == device and f"{info.st_ino}" == inode


def configure(level: int, name: str) -> None:
    """Log at `level` to standard error, each line "TIME NAME: message"."""
    stamp = "" if _to_journal() else "%(asctime)s.%(msecs)03d "
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{stamp}{name}: %(message)s",
                                           datefmt="%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
