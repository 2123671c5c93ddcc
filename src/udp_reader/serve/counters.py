"""What the master counts, every figure only growing: per slot what its
workers counted (the live ones' last report added when shown), events
(worker starts, exits by cause, restarts) and the kernel's drops.

An upgrade (USR2) carries them from the old master to the new. Status and
metrics show totals since start; a new master that began from zero would
look like a counter reset. The old master hands its final counters on as
it leaves (upgrade.NewMaster.leave), when its workers are gone and so
every count is in, and the new master adds them to its own. Workers of the
two never count the same datagram, so nothing is counted twice.
"""

from __future__ import annotations

import collections
from typing import Dict, Iterable, Tuple

from udp_reader.serve.listeners import Listener
from udp_reader.serve.slots import Slot
from udp_reader.serve.workers import WorkerProcess

Sockets = Iterable[Tuple[Slot, Listener]]  # each socket once, with its first slot


class Counts:
    def __init__(self) -> None:
        self.totals: collections.Counter = collections.Counter()  # of workers that ended
        self.past: Dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        self.events: collections.Counter = collections.Counter()
        self.kernel_drops = 0

    def worker_ended(self, worker: WorkerProcess) -> None:
        counts = {k: v for k, v in worker.stats.items() if isinstance(v, int)}
        self.totals.update(counts)
        self.past[worker.slot].update(counts)

    def carried(self, sockets: Sockets) -> dict:
        """What the old master hands on: per slot, what its workers counted and
        the kernel drops seen on its socket; the events; the drop total."""
        return {
            "slots": {str(slot): dict(counts) for slot, counts in self.past.items()},
            "socket_drops": {str(slot.index): listener.drops_seen for slot, listener in sockets},
            "events": dict(self.events),
            "kernel_drops": self.kernel_drops,
        }

    def carry_over(self, carried: dict, sockets: Sockets) -> None:
        """Add what the old master handed on to the new master's counters."""
        for slot, counts in _ints_by_slot(carried.get("slots")).items():
            self.past[slot].update(counts)
            self.totals.update(counts)
        drops = _ints(carried.get("socket_drops"))
        for s, listener in sockets:
            listener.drops_seen += drops.get(str(s.index), 0)
        self.events.update(_ints(carried.get("events")))
        kernel_drops = carried.get("kernel_drops")
        if isinstance(kernel_drops, int):
            self.kernel_drops += kernel_drops


def _ints(value: object) -> Dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)}


def _ints_by_slot(value: object) -> Dict[int, Dict[str, int]]:
    if not isinstance(value, dict):
        return {}
    return {int(k): _ints(v) for k, v in value.items() if str(k).isdigit()}
