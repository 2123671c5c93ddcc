"""The port's sockets as the master holds them.

The master keeps a copy of every socket its workers read, so a queue
outlives any worker. A socket it binds itself joins the port's SO_REUSEPORT
group only when its first reader is ready. A socket a service manager
passed (systemd) is `external`: connect() would take it out of steering for
every holder (the manager included), so it is never shed.
"""

from __future__ import annotations

import socket
from typing import Optional

from udp_reader import bindcheck, sockets


class Listener:
    def __init__(self, sock: socket.socket, sockaddr: Optional[tuple] = None, *,
                 external: bool = False, passed: bool = False) -> None:
        self.sock = sock
        self.unbound = sockaddr     # where to bind it once its reader is ready
        self.external = external
        self.passed = passed        # handed to or from another master: it may hold it too
        self._peer: Optional[socket.socket] = None  # our throwaway peer, once shed
        self._drops = sockets.kernel_drops(sock)
        self.drops_seen = 0  # since the master took it

    @property
    def shed(self) -> bool:
        return self._peer is not None or sockets.is_shed(self.sock)

    def check_bind(self) -> None:
        """Raise the OSError bind() would, where that can be known without
        binding (bindcheck.py): found before any worker starts."""
        if self.unbound is not None:
            bindcheck.check(self.sock.family, self.unbound)

    def bind(self, port: Optional[int]) -> int:
        """Join the port (on `port` once one is chosen); returns the port."""
        assert self.unbound is not None
        sockaddr = self.unbound if port is None else (self.unbound[0], port, *self.unbound[2:])
        sockets.bind(self.sock, sockaddr)
        self.unbound = None
        return self.sock.getsockname()[1]

    def leave_group(self) -> None:
        """Stop the kernel steering new datagrams here; the queue stays."""
        if not self.shed:
            self._peer = sockets.shed(self.sock)

    def queued(self) -> int:
        """Bytes waiting in the receive queue (0 before it joins the port)."""
        info = sockets.meminfo(self.sock) if self.unbound is None else ()
        return info[0] if info else 0

    def new_drops(self) -> int:
        """What the kernel dropped here since the last call (its counter
        wraps at 2**32)."""
        now = sockets.kernel_drops(self.sock)
        new, self._drops = (now - self._drops) & 0xFFFFFFFF, now
        self.drops_seen += new
        return new

    def close(self, discard: bool) -> int:
        """Close our copy. With `discard` (nobody else holds the socket),
        first count what is still queued, which the close would free."""
        left = sockets.discard_queue(self.sock) if discard and self.unbound is None else 0
        self.sock.close()
        if self._peer is not None:
            self._peer.close()
        return left
