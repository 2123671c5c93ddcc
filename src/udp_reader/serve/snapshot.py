"""What the master knows, in one declared shape: published every second
to the status file (statusfile.py, read by `udp-reader status`) and to
--metrics (metrics.py). It serialises, field for field and in this order,
to the JSON those read; a field may be added, none changed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional


@dataclasses.dataclass(frozen=True)
class WorkerView:
    pid: int
    state: str                 # workers.State
    started: float             # seconds since the epoch
    stats: Dict[str, Any]      # its last counters (Reader.stats, handler_errors, busy_for)


@dataclasses.dataclass(frozen=True)
class SlotView:
    slot: int
    state: str                 # Slot.reported: draining, no reader, or its reader's state
    queued_bytes: int
    kernel_drops: int          # on its socket since the master took it
    workers: List[WorkerView]  # its reader, then the worker getting ready to take over
    totals: Dict[str, int]     # every worker that ever read it, the live ones included


@dataclasses.dataclass(frozen=True)
class Snapshot:
    pid: int
    address: str
    time: float                # seconds since the epoch
    phase: str                 # phase.Phase
    workers: int               # the target (--workers, TTIN, TTOU)
    slots: List[SlotView]      # in the group, then those draining
    events: Dict[str, int]     # worker_starts, exits_<exits.ExitCause>, restarts, ...
    kernel_drops: int
    shared: bool
    metrics: Optional[str]     # where --metrics serves (the port it bound when given 0)
    # Other masters holding these sockets (an upgrade, a takeover): old_master
    # and new_master pids, takeover_peers; only those there are.
    others: Dict[str, int]

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)
