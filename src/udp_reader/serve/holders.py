"""The other holders of our sockets: the master we upgrade from (until it
has left), the new master a USR2 started, and takeover peers (--handoff).

While another holds them and goes on serving, no socket it holds is shed:
taking one out of the group would take it out for them too. Each holder
speaks through a descriptor the master's loop watches; what it says comes
back to the arbiter as a return value where the arbiter decides (a new
master ready: this one stops; the old one gone: its counters carry over).
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
from typing import List, Optional, Sequence, Tuple

from udp_reader import handoff
from udp_reader.serve import upgrade
from udp_reader.serve.exits import exit_reason
from udp_reader.serve.listeners import Listener
from udp_reader.serve.pidfile import PidFile
from udp_reader.serve.processes import Processes

log = logging.getLogger("udp_reader")


class Holders:
    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        self.predecessor: Optional[upgrade.Predecessor] = None
        self.predecessor_fd: Optional[int] = None  # readable as it leaves
        self.predecessor_told = False  # asked to leave: it no longer serves
        self.new_master: Optional[upgrade.NewMaster] = None  # USR2
        self.new_master_fd: Optional[int] = None  # it writes a byte here once ready
        self.new_master_ready = False
        self.abandoned: List[upgrade.NewMaster] = []  # new masters stopped before ready
        self.peers: List[socket.socket] = []
        self.pid_file: Optional[PidFile] = None  # set aside while a new master takes over

    def co_held(self) -> bool:
        """Another master holds our sockets and goes on serving them: a
        takeover peer, the new master of an upgrade, or the old master
        until it is asked to leave."""
        return (bool(self.peers) or self.new_master is not None
                or (self.predecessor_fd is not None and not self.predecessor_told))

    def may_shed(self, listener: Listener) -> bool:
        """Ours alone: a socket opened since the others took theirs (TTIN
        while a takeover peer holds the rest) is, and is shed and drained."""
        return not listener.external and not (listener.passed and self.co_held())

    # -- the master we upgrade from ------------------------------------------------

    def watch_predecessor(self, predecessor: upgrade.Predecessor) -> None:
        self.predecessor = predecessor
        try:
            self.predecessor_fd = predecessor.watch()
            self.selector.register(self.predecessor_fd, selectors.EVENT_READ, "predecessor")
        except ProcessLookupError:
            pass

    @property
    def predecessor_here(self) -> bool:
        """The old master has not left yet."""
        return self.predecessor_fd is not None

    def tell_predecessor_to_leave(self) -> None:
        assert self.predecessor is not None
        log.info("new workers ready; asking the old master %d to leave", self.predecessor.pid)
        self.predecessor.tell_to_leave()
        self.predecessor_told = True

    def predecessor_left(self) -> Optional[dict]:
        """The counters the old master handed on once it has left; None
        while it is still leaving."""
        assert self.predecessor_fd is not None and self.predecessor is not None
        carried = self.predecessor.read(self.predecessor_fd)
        if carried is None:
            return None
        self.selector.unregister(self.predecessor_fd)
        os.close(self.predecessor_fd)
        self.predecessor_fd = None
        log.info("the old master has left")
        return carried

    # -- the master we upgrade to (USR2) --------------------------------------------

    def start_new_master(self, processes: Processes, argv: Sequence[str],
                         handed: Sequence[Tuple[int, socket.socket, bool]],
                         workers: int, state_dir: Optional[str]) -> None:
        try:
            new_master = processes.start_new_master(argv, handed, workers, state_dir)
        except OSError as e:
            log.error("cannot start a new master: %s; this master carries on",
                      e.strerror or e)
            return
        self.new_master, self.new_master_fd = new_master, new_master.ready_fd
        self.selector.register(self.new_master_fd, selectors.EVENT_READ, "new master")
        if self.pid_file is not None:
            self.pid_file.set_aside()
        log.info("upgrading: new master %d started", new_master.pid)

    def new_master_said_ready(self) -> bool:
        """A byte: the new master is ready. End of file without one: it is
        exiting (check_new_master tells why)."""
        assert self.new_master_fd is not None
        try:
            ready = os.read(self.new_master_fd, 1)
        except BlockingIOError:
            return False
        self._close_new_master_fd()
        return bool(ready)

    def check_new_master(self) -> None:
        """Has the new master exited? Before it was ready, this master is
        the server again."""
        self.abandoned = [p for p in self.abandoned if p.poll() is None]
        if self.new_master is None or self.new_master.poll() is None:
            return
        self._close_new_master_fd()
        if self.new_master_ready:
            log.warning("the new master %d exited (%s)", self.new_master.pid,
                        exit_reason(self.new_master.returncode))
        else:
            log.error("the new master exited (%s) before it was ready; this master carries on",
                      exit_reason(self.new_master.returncode))
            if self.pid_file is not None:
                self.pid_file.restore()
        self.new_master = None

    def pass_stop(self, sig: int) -> None:
        """TERM, INT or QUIT during an upgrade is the service's stop: the new
        master gets it too. One not yet ready never read, so this master is
        the only one serving again (and drains as usual)."""
        if self.new_master is None:
            return
        log.info("a stop during an upgrade: passing %s to the new master %d",
                 signal.Signals(sig).name, self.new_master.pid)
        try:
            # INT as TERM: from a terminal the new master may get the
            # INT itself too, and two INTs would make its stop fast.
            self.new_master.send_signal(signal.SIGTERM if sig == signal.SIGINT else sig)
        except ProcessLookupError:
            pass
        if not self.new_master_ready:
            self._close_new_master_fd()
            self.abandoned.append(self.new_master)  # not waited for
            self.new_master = None
            if self.pid_file is not None:
                self.pid_file.restore()

    def _close_new_master_fd(self) -> None:
        if self.new_master_fd is not None:
            self.selector.unregister(self.new_master_fd)
            os.close(self.new_master_fd)
            self.new_master_fd = None

    # -- takeover peers ----------------------------------------------------------------

    def add_peer(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        self.peers.append(conn)
        self.selector.register(conn, selectors.EVENT_READ, conn)

    def offer(self, server: handoff.HandoffServer,
              handed: Sequence[Tuple[int, socket.socket, bool]]) -> None:
        """A master connected to our handoff socket: give it our sockets."""
        try:
            conn = upgrade.offer(server, handed)
        except OSError as e:
            log.warning("handoff to another master failed: %s", e)
            return
        if conn is not None:
            self.add_peer(conn)
            log.info("sockets shared with another master; they are no longer shed")

    def peer_spoke(self, conn: socket.socket) -> None:
        try:
            if conn.recv(1):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        self.selector.unregister(conn)
        self.peers.remove(conn)
        conn.close()
        log.info("the other master holding our sockets is gone; they are ours alone again")

    def close(self) -> None:
        for peer in self.peers:
            peer.close()
        if self.predecessor_fd is not None:
            os.close(self.predecessor_fd)
        self._close_new_master_fd()
