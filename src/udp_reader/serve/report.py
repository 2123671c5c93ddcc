"""What the master tells the operator beyond its log lines: the snapshot
(snapshot.py) and the kernel's drops on each socket it holds."""

from __future__ import annotations

import collections
import logging
import os
import time
from typing import TYPE_CHECKING

from udp_reader._constants import GSO_SEGMENTS
from udp_reader.serve.snapshot import SlotView, Snapshot, WorkerView

if TYPE_CHECKING:
    from udp_reader.serve.arbiter import Arbiter

log = logging.getLogger("udp_reader")


def snapshot(arbiter: "Arbiter") -> Snapshot:
    """Each slot's socket and workers, and counters that only grow."""
    slots = []
    for slot in arbiter.group.every():
        live = collections.Counter(arbiter.counts.past[slot.index])
        for w in arbiter.workers.values():
            if w.slot == slot.index:
                live.update({k: v for k, v in w.stats.items() if isinstance(v, int)})
        slots.append(SlotView(
            slot=slot.index, state=slot.reported, queued_bytes=slot.listener.queued(),
            kernel_drops=slot.listener.drops_seen,
            workers=[WorkerView(w.pid, w.state.value, w.started, w.stats)
                     for w in (slot.reader, slot.incoming) if w is not None],
            totals=dict(live)))
    holders = arbiter.holders
    others = {"old_master": holders.predecessor.pid if holders.predecessor is not None
              and holders.predecessor_here else None,
              "new_master": holders.new_master.pid if holders.new_master is not None else None,
              "takeover_peers": len(holders.peers) or None}
    return Snapshot(pid=os.getpid(), address=arbiter.address, time=time.time(),
                    phase=arbiter.phase.value, workers=arbiter.group.target, slots=slots,
                    events=dict(arbiter.counts.events),
                    kernel_drops=arbiter.counts.kernel_drops,
                    shared=arbiter.group.shared,
                    metrics=arbiter.metrics.url if arbiter.metrics is not None else None,
                    others={k: v for k, v in others.items() if v is not None})


def watch_drops(arbiter: "Arbiter") -> None:
    """Count and log what the kernel dropped on each socket since the last look."""
    for slot, listener in arbiter.group.listeners():
        new = listener.new_drops()
        if new:
            arbiter.counts.kernel_drops += new
            where = "the shared socket" if arbiter.group.shared else f"the socket of {slot}"
            reader = f" (worker {slot.reader.pid})" if slot.reader else " (no reader)"
            unit = (f"receive buffer(s) (with GRO, one holds up to {GSO_SEGMENTS} datagrams)"
                    if arbiter.config.reader.gro else "datagram(s)")
            log.warning("the kernel dropped %d %s on %s%s: its receive queue was full",
                        new, unit, where, "" if arbiter.group.shared else reader)
