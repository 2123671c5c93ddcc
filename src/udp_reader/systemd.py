"""systemd integration: socket activation and sd_notify, by their protocols
(sd_listen_fds(3), sd_notify(3)); no libsystemd needed."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import List, Tuple

SD_LISTEN_FDS_START = 3

log = logging.getLogger("udp_reader")


def listen_fds(unset_environment: bool = True) -> List[Tuple[str, socket.socket]]:
    """Sockets passed by systemd socket activation, as [(name, socket)].

    Empty unless LISTEN_PID names this process. The variables are removed so
    that children do not take the sockets for theirs."""
    pid = os.environ.get("LISTEN_PID", "")
    count = os.environ.get("LISTEN_FDS", "0")
    names = os.environ.get("LISTEN_FDNAMES", "")
    if unset_environment:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(key, None)
    if not (pid.isdigit() and int(pid) == os.getpid() and count.isdigit()):
        return []
    labels = names.split(":") if names else []
    out = []
    for i in range(int(count)):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        out.append((labels[i] if i < len(labels) else "unknown", socket.socket(fileno=fd)))
    return out


def notify(*states: str) -> bool:
    """Send states ("READY=1", "STATUS=...") to the service manager.
    Returns False when not run under a manager that listens (no
    NOTIFY_SOCKET), or when it does not take the message now: a manager
    that stopped reading must never block the caller."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.connect(path)
            s.send("\n".join(states).encode(), socket.MSG_DONTWAIT)
        except OSError as e:
            log.debug("sd_notify to %s failed: %s", path.lstrip("\0"), e.strerror or e)
            return False
    return True


def notify_reloading() -> bool:
    """RELOADING=1 with the timestamp Type=notify-reload services must give."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")
