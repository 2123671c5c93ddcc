"""The process seam: every process the master starts, behind one object.

The master's decisions take processes as inputs and never create one
themselves: a worker (workers.spawn) or a new master (upgrade, USR2) comes
from here, and is then told commands, signalled and killed through the
object returned (WorkerProcess, upgrade.NewMaster). Unit tests pass a fake
one and drive the master with no child process at all.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import socket

from udp_reader.serve import upgrade, workers
from udp_reader.serve.listeners import Listener
from udp_reader.serve.orders import WorkerOrders


class Processes:
    def spawn_worker(self, listener: Listener, slot: int, generation: int,
                     orders: WorkerOrders, start_timeout: float) -> workers.WorkerProcess:
        """Raises OSError when the system refuses (descriptors, processes)."""
        return workers.spawn(listener.sock.fileno(), slot, generation, orders, start_timeout)

    def start_new_master(self, argv: Sequence[str],
                         handed: Sequence[Tuple[int, socket.socket, bool]],
                         workers: int, state_dir: Optional[str]) -> upgrade.NewMaster:
        """The same command again, with our sockets (USR2) and the state
        directory this master made, if any. Raises OSError."""
        return upgrade.start_new_master(argv, handed, workers, state_dir)
