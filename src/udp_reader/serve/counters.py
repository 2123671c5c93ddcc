"""The counters an upgrade (USR2) carries from the old master to the new.

Status and metrics show totals since start; a new master that began from
zero would look like a counter reset. The old master hands its final
counters on as it leaves (upgrade.NewMaster.leave), when its workers are
gone and so every count is in, and the new master adds them to its own.
Workers of the two never count the same datagram, so nothing is counted
twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict

if TYPE_CHECKING:
    from udp_reader.serve.arbiter import Arbiter


def carried(arbiter: "Arbiter") -> dict:
    """What the old master hands on: per slot, what its workers counted and
    the kernel drops seen on its socket; the events; the drop total."""
    return {
        "slots": {str(slot): dict(counts) for slot, counts in arbiter.past.items()},
        "socket_drops": {str(slot.index): listener.drops_seen
                         for slot, listener in arbiter.group.listeners()},
        "events": dict(arbiter.events),
        "kernel_drops": arbiter.kernel_drops,
    }


def carry_over(arbiter: "Arbiter", carried: dict) -> None:
    """Add what the old master handed on to the new master's counters."""
    for slot, counts in _ints_by_slot(carried.get("slots")).items():
        arbiter.past[slot].update(counts)
        arbiter.totals.update(counts)
    drops = _ints(carried.get("socket_drops"))
    for slot, listener in arbiter.group.listeners():
        listener.drops_seen += drops.get(str(slot.index), 0)
    arbiter.events.update(_ints(carried.get("events")))
    kernel_drops = carried.get("kernel_drops")
    if isinstance(kernel_drops, int):
        arbiter.kernel_drops += kernel_drops


def _ints(value: object) -> Dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)}


def _ints_by_slot(value: object) -> Dict[int, Dict[str, int]]:
    if not isinstance(value, dict):
        return {}
    return {int(k): _ints(v) for k, v in value.items() if str(k).isdigit()}
