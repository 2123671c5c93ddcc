"""Message ids (`Nats-Msg-Id`): unique per batch, and the same on every
re-send of it, so JetStream drops a re-send after a lost acknowledgement
as a duplicate within the stream's duplicate window.

An id is ORIGIN/SEQUENCE: the origin names one publisher of one process
on one boot of one host (host name, boot id, pid, and the boot clock when
the publisher began, since a pid comes back within a boot), the sequence
counts its batches. The id is given once, when a batch is taken, and
travels with the batch's bytes through every retry: it never depends on
the connection, the server or the time of the send.
"""

from __future__ import annotations

import itertools
import os
import socket
import time


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()[:8]
    except OSError:
        return "noboot"


class Ids:
    """The ids of one publisher's batches, in order."""

    def __init__(self, tag: str = "") -> None:
        started = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        parts = [socket.gethostname(), boot_id(), *([tag] if tag else []),
                 f"{os.getpid()}.{started}"]
        self.origin = "/".join(parts)
        self._sequence = itertools.count(1)

    def next(self) -> str:
        return f"{self.origin}/{next(self._sequence)}"
