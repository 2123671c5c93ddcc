"""The port's SO_REUSEPORT group as the master holds it: a slot per worker
in the group, and slots that left it and are being drained.

TTIN and TTOU move the target and resize() follows it: a new slot takes
the lowest free number; the highest goes, its socket leaving the group and
drained (or, --shared, its worker retired). A slot left without a reader
may leave the group too (off_port), so the others take its traffic, with a
fresh socket in its place. --steer decides which socket a datagram reaches.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Iterator, List, Optional, Tuple

from udp_reader.errors import describe
from udp_reader.serve import protocol, sources, state, steering
from udp_reader.serve.config import Config
from udp_reader.serve.listeners import Listener
from udp_reader.serve.slots import Slot
from udp_reader.serve.workers import State

log = logging.getLogger("udp_reader")


class Group:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.slots: List[Slot] = []    # in the group, one per worker
        self.drains: List[Slot] = []   # left the group, queue still to read
        self.shared = config.shared    # every slot reads one socket
        self.target = config.workers   # TTIN and TTOU move it
        self.port: Optional[int] = None  # once a socket is bound, the others take it too
        self.cpus = sorted(os.sched_getaffinity(0))
        self.steered_for = 0
        self.state_dir: Optional[str] = None  # the handlers' state, a file per slot

    def every(self) -> List[Slot]:
        return self.slots + self.drains

    def listeners(self, drains: bool = True) -> Iterator[Tuple[Slot, Listener]]:
        """Each socket we hold once, with the first slot that reads it."""
        seen = set()
        for slot in self.slots + (self.drains if drains else []):
            if id(slot.listener) not in seen:
                seen.add(id(slot.listener))
                yield slot, slot.listener

    def handed(self) -> List[Tuple[int, socket.socket, bool]]:
        """The sockets of the group, to hand to another master (which may
        then hold them too)."""
        listeners = [(slot, listener) for slot, listener in self.listeners(drains=False)
                     if listener.unbound is None]
        for _, listener in listeners:
            listener.passed = True
        return [(slot.index, listener.sock, listener.external) for slot, listener in listeners]

    def cpu(self, slot: Slot) -> int:
        return self.cpus[slot.index % len(self.cpus)]

    def may_grow(self) -> bool:
        """--steer cpu runs one worker per CPU at most."""
        return self.config.steer != "cpu" or self.target < len(self.cpus)

    def bind(self, slot: Slot) -> None:
        """The slot's socket joins the group, its first reader being ready.
        Raises OSError."""
        if slot.listener.unbound is None:
            return
        if self.config.steer == "cpu":
            steering.prefer_cpu(slot.listener.sock, self.cpu(slot))
        self.port = slot.listener.bind(self.port)

    def steer(self) -> None:
        """--steer spread: the group's program deals over every socket in
        it (shed ones included until closed: the kernel passes a datagram
        the program gives a shed socket on to the others)."""
        if self.config.steer != "spread":
            return
        group = [listener for _, listener in self.listeners() if listener.unbound is None]
        if group and len(group) != self.steered_for:
            steering.spread(group[0].sock, len(group))
            self.steered_for = len(group)
            log.info("datagrams dealt at random over %d socket(s)", len(group))

    def to_drains(self, slot: Slot, leave_by: float) -> None:
        """Out of the group: its reader drains what the socket holds.
        Raises OSError (out of descriptors for the throwaway peer) before
        anything changed."""
        slot.listener.leave_group()
        self.slots.remove(slot)
        slot.drain()
        self.drains.append(slot)
        if slot.reader is not None and slot.reader.state is State.SERVING:
            slot.reader.tell(protocol.DRAIN, State.LEAVING, leave_by)

    def off_port(self, slot: Slot, leave_by: float) -> None:
        """Nobody reads the slot: take its socket out of the group so the
        others get its traffic; a worker drains it once one can start."""
        try:
            listener = sources.new_listener(self.config)
            try:
                self.to_drains(slot, leave_by)
            except OSError:
                listener.close(discard=False)
                raise
        except OSError as e:  # out of descriptors: it stays, and is retried
            log.error("cannot take %s off the port: %s; it stays, its queue waiting "
                      "for a worker", slot, describe(e))
            return
        log.warning("%s leaves the port; its queue waits for a worker to drain it", slot)
        self.slots.append(slot.replacement(listener))

    def remove(self, slot: Slot) -> None:
        """A slot that never had a reader goes, and the target with it."""
        self.slots.remove(slot)
        self.target = len(self.slots)
        state.forget(self.state_dir, slot.index)
        if not self.shared:
            slot.listener.close(discard=False)

    def drained(self, slot: Slot) -> None:
        self.drains.remove(slot)
        left = slot.listener.close(discard=True)
        if left:
            log.warning("%d datagram(s) still queued on the socket %s left were discarded",
                        left, slot)

    def resize(self, leave_by: float, dismiss_by: float) -> None:
        """To the target."""
        while len(self.slots) < self.target:
            try:
                listener = (self.slots[0].listener if self.shared
                            else sources.new_listener(self.config))
            except OSError as e:
                log.error("cannot open a socket for a new worker: %s", e.strerror or e)
                self.target = len(self.slots)
                return
            used = {s.index for s in self.slots}
            self.slots.append(Slot(min(set(range(len(used) + 1)) - used), listener))
        while len(self.slots) > self.target:
            slot = max(self.slots, key=lambda s: s.index)
            slot.forget_incoming(dismiss_by)
            if self.shared or slot.listener.unbound is not None:
                self.slots.remove(slot)
                if slot.reader is not None:  # nobody follows it: drain, not retire
                    slot.reader.tell(protocol.DRAIN, State.LEAVING, leave_by)
                if not self.shared:
                    slot.listener.close(discard=False)
            else:
                try:
                    self.to_drains(slot, leave_by)
                except OSError as e:
                    log.error("TTOU not done: cannot take %s off the port: %s", slot, describe(e))
                    self.target = len(self.slots)
                    return
            state.forget(self.state_dir, slot.index)  # a later TTIN's slot starts empty
