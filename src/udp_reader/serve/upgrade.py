"""Where a master's sockets come from, and how it hands them on.

- Bound here (listeners.py), or
- passed by a service manager (systemd socket activation): external, never
  shed, all workers share the first one;
- inherited across exec from the master this one upgrades (USR2), or
- taken from a running master over its handoff socket (--takeover).

A USR2 joins the old and the new master by two pipes: the new one writes
a byte on one once it is ready (so a TERM to the old master is always the
operator's or the service manager's stop, which it passes on: a stop during
an upgrade stops the service); the old one writes its counters on the other
and closes it once it has left.

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

# {"pid", "workers", "left_fd", "ready_fd", "state_dir"} of the old master, for the new one
UPGRADE_ENV = "UDP_READER_UPGRADE_FROM"


class Handed(NamedTuple):
    slot: Optional[int]   # None: not ours to place (systemd)
    sock: socket.socket
    external: bool


def _name(slot: int, external: bool) -> str:
    return f"{slot}+external" if external else str(slot)


def _parse(name: str, sock: socket.socket) -> Handed:
    number, _, flag = name.partition("+")
    return Handed(int(number) if number.isdigit() else None, sock, flag == "external")


class Predecessor:
    """The master we upgrade from. It tells us it has left (its sockets
    closed, its workers gone) by closing a pipe, after writing its
    counters into it (NewMaster.leave): the totals go on from there. It
    may stay alive after that: a foreground master waits for us
    (foreground.py)."""

    def __init__(self, pid: int, workers: int, left_fd: Optional[int],
                 ready_fd: Optional[int], state_dir: Optional[str] = None) -> None:
        self.pid = pid
        self.workers = workers
        self.state_dir = state_dir  # its handlers' state, made by it: ours now (state.py)
        self._left_fd = left_fd  # None: a master that only exits (watch its pid)
        self._ready_fd = ready_fd  # None: a master that a TERM tells to leave
        self._said = b""

    def tell_to_leave(self) -> None:
        """We are ready: the old master leaves."""
        try:
            if self._ready_fd is None:
                os.kill(self.pid, signal.SIGTERM)
            else:
                os.write(self._ready_fd, b"R")
        except (ProcessLookupError, BrokenPipeError):
            pass  # gone already
        finally:
            if self._ready_fd is not None:
                os.close(self._ready_fd)
                self._ready_fd = None

    def watch(self) -> int:
        """A descriptor that turns readable as the old master leaves."""
        if self._left_fd is None:
            return os.pidfd_open(self.pid)
        os.set_blocking(self._left_fd, False)
        os.set_inheritable(self._left_fd, False)
        return self._left_fd

    def read(self, fd: int) -> Optional[dict]:
        """What the old master carried over once it has left (empty if it
        said nothing: it crashed, or it only exits); None until then."""
        if self._left_fd is None:
            return {}
        try:
            while chunk := os.read(fd, 65536):
                self._said += chunk
        except BlockingIOError:
            return None
        try:
            carried = json.loads(self._said or b"{}")
        except ValueError:
            return {}
        return carried if isinstance(carried, dict) else {}


def inherited() -> Tuple[Optional[Predecessor], List[Handed]]:
    """Sockets an upgrading master left us across exec, or a service
    manager passed (socket activation)."""
    text = os.environ.pop(UPGRADE_ENV, "")
    socks = handoff.import_inherited()
    if text and socks:
        info = json.loads(text)
        left_fd, ready_fd = info.get("left_fd"), info.get("ready_fd")
        if ready_fd is not None:
            os.set_inheritable(ready_fd, False)
        return (Predecessor(int(info["pid"]), int(info["workers"]),
                            int(left_fd) if left_fd is not None else None,
                            int(ready_fd) if ready_fd is not None else None,
                            info.get("state_dir")),
                [_parse(name, s) for name, s in socks])
    return None, [Handed(None, s, True) for _, s in systemd.listen_fds()]


class NewMaster(subprocess.Popen):
    """The new master a USR2 started, the pipe that tells it when we have
    left, and `ready_fd`, where it says it is ready (one byte; end of file
    without one: it failed). The caller closes ready_fd."""

    def __init__(self, command: List[str], env: dict, pass_fds: Sequence[int],
                 left_fd: int, ready_fd: int) -> None:
        super().__init__(command, env=env, pass_fds=pass_fds)
        self._left_fd: Optional[int] = left_fd
        self.ready_fd = ready_fd

    def leave(self, carried: dict) -> None:
        """Say we have left, handing on our counters."""
        if self._left_fd is None:
            return
        try:
            os.write(self._left_fd, json.dumps(carried).encode())  # far below a pipe's 64 KiB
        except OSError:
            pass  # it is gone
        os.close(self._left_fd)
        self._left_fd = None

    def __del__(self) -> None:  # a new master that failed: no one reads the pipe
        if getattr(self, "_left_fd", None) is not None:
            os.close(self._left_fd)
            self._left_fd = None
        super().__del__()


def start_new_master(argv: Sequence[str], handed: Sequence[Tuple[int, socket.socket, bool]],
                     workers: int, state_dir: Optional[str] = None) -> NewMaster:
    """Run the same command again with our sockets (USR2), and the state
    directory we made (it is the new master's to remove)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    ready_read, ready_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    env = dict(os.environ, **{UPGRADE_ENV: json.dumps(
        {"pid": os.getpid(), "workers": workers, "left_fd": read_end,
         "ready_fd": ready_write, "state_dir": state_dir})})
    fds = handoff.export_for_exec([(_name(slot, ext), s) for slot, s, ext in handed], env)
    try:
        return NewMaster([*bootstrap.command("udp_reader"), *argv], env=env,
                         pass_fds=[*fds, read_end, ready_write], left_fd=write_end,
                         ready_fd=ready_read)
    except BaseException:
        os.close(write_end)
        os.close(ready_read)
        raise
    finally:
        os.close(read_end)
        os.close(ready_write)
        for fd in fds:
            os.set_inheritable(fd, False)


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
