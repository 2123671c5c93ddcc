"""Where a master's sockets come from, and how it hands them on.

- Bound here (listeners.py), or
- passed by a service manager (systemd socket activation): external, never
  shed, all workers share the first one;
- inherited across exec from the master this one upgrades (USR2), or
- taken from a running master over its handoff socket (--takeover).

A new master started by USR2 says it is ready, and so that the old one must
leave, by writing a byte on a pipe the old one passed it; a TERM to the old
master is then always the operator's (or the service manager's) stop, which
it passes on to the new one: a stop during an upgrade stops the service.

Handed-over sockets keep their slot number, so the SO_REUSEPORT group, and
with it every flow's slot, stays as it was. The Unix connection of a
takeover stays open: while it does, both masters hold the sockets and
neither sheds them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from typing import List, NamedTuple, Optional, Sequence, Tuple

from udp_reader import handoff, systemd
from udp_reader.serve import bootstrap

UPGRADE_ENV = "UDP_READER_UPGRADE_FROM"  # {"pid", "workers", "ready_fd"} of the old master


class Handed(NamedTuple):
    slot: Optional[int]   # None: not ours to place (systemd)
    sock: socket.socket
    external: bool


def _name(slot: int, external: bool) -> str:
    return f"{slot}+external" if external else str(slot)


def _parse(name: str, sock: socket.socket) -> Handed:
    number, _, flag = name.partition("+")
    return Handed(int(number) if number.isdigit() else None, sock, flag == "external")


class Predecessor(NamedTuple):
    pid: int
    workers: int
    ready_fd: Optional[int]  # write a byte here once ready (absent: a TERM does)


def tell_to_leave(predecessor: Predecessor) -> None:
    """The new master is ready: the old one leaves."""
    try:
        if predecessor.ready_fd is None:
            os.kill(predecessor.pid, signal.SIGTERM)
        else:
            os.write(predecessor.ready_fd, b"R")
    except (ProcessLookupError, BrokenPipeError):
        pass  # gone already
    finally:
        if predecessor.ready_fd is not None:
            os.close(predecessor.ready_fd)


def inherited() -> Tuple[Optional[Predecessor], List[Handed]]:
    """Sockets an upgrading master left us across exec, or a service
    manager passed (socket activation)."""
    text = os.environ.pop(UPGRADE_ENV, "")
    socks = handoff.import_inherited()
    if text and socks:
        info = json.loads(text)
        ready_fd = info.get("ready_fd")
        if ready_fd is not None:
            os.set_inheritable(ready_fd, False)
        return (Predecessor(int(info["pid"]), int(info["workers"]), ready_fd),
                [_parse(name, s) for name, s in socks])
    return None, [Handed(None, s, True) for _, s in systemd.listen_fds()]


def start_successor(argv: Sequence[str], handed: Sequence[Tuple[int, socket.socket, bool]],
                    workers: int) -> Tuple[subprocess.Popen, int]:
    """Run the same command again with our sockets (USR2); returns the new
    master and the pipe end it says it is ready on (one byte; end of file
    without one: it failed)."""
    ready_read, ready_write = os.pipe2(os.O_CLOEXEC)
    env = dict(os.environ, **{UPGRADE_ENV: json.dumps(
        {"pid": os.getpid(), "workers": workers, "ready_fd": ready_write})})
    fds = handoff.export_for_exec([(_name(slot, ext), s) for slot, s, ext in handed], env)
    try:
        proc = subprocess.Popen([*bootstrap.command("udp_reader"), *argv], env=env,
                                pass_fds=(*fds, ready_write))
    except BaseException:
        os.close(ready_read)
        raise
    finally:
        os.close(ready_write)
        for fd in fds:
            os.set_inheritable(fd, False)
    os.set_blocking(ready_read, False)
    return proc, ready_read


def take_over(directory: str) -> Tuple[socket.socket, List[Handed]]:
    """The sockets a running master offers in `directory` (its --handoff),
    and the connection that says it is still there."""
    conn, socks = handoff.take_sockets(handoff.private_path(directory))
    return conn, [_parse(name, s) for name, s in socks]


def offer(server: handoff.HandoffServer,
          handed: Sequence[Tuple[int, socket.socket, bool]]) -> Optional[socket.socket]:
    """Give our sockets to the master that connected; the connection, kept
    open while it lives, or None if it was refused."""
    return server.accept_one([(_name(slot, ext), s) for slot, s, ext in handed], timeout=1.0)
