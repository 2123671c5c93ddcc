"""A slot: one reader's place on the port, and the one place its state
changes.

A slot holds a socket (listeners.py) and the workers at it: `reader`, who
reads it (or is leaving it), and `incoming`, a worker getting ready to take
it over like a baton. Its state moves only by the events below (one method
each); MOVES is the whole machine:

    NO_READER     start: a worker spawned for it        STARTING
    STARTING      take_turn: it is ready and reads      SERVING
    SERVING       start: its replacement spawned        HANDING_OVER
    HANDING_OVER  take_turn: the old one let go         SERVING
    STARTING      incoming_gone: it failed to start     NO_READER
    HANDING_OVER  incoming_gone                         SERVING
    SERVING       reader_gone: its reader exited        NO_READER
    HANDING_OVER  reader_gone                           STARTING
    any           drain: it left the group for good     DRAINING

A worker that cannot start costs the slot a back-off (Backoff), and what
follows the failure is a policy of its own (after_failed_start).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Dict, Optional

from udp_reader.serve.listeners import Listener
from udp_reader.serve.workers import NEVER, State, WorkerProcess

MAX_BACKOFF = 30.0  # seconds between attempts to start a worker for a slot without one


class SlotState(enum.Enum):
    NO_READER = "no reader"        # a worker starts once the back-off allows
    STARTING = "starting"          # its first (or next) reader is getting ready
    SERVING = "serving"            # its reader reads
    HANDING_OVER = "handing over"  # its reader reads; the incoming worker gets ready
    DRAINING = "draining"          # out of the group: read until empty, then closed


NO_READER, STARTING, SERVING, HANDING_OVER, DRAINING = SlotState

# Each event: the state it moves a slot from, to the state it moves it to.
# A draining slot stays draining whatever its workers do.
MOVES: Dict[str, Dict[SlotState, SlotState]] = {
    "start": {NO_READER: STARTING, SERVING: HANDING_OVER, DRAINING: DRAINING},
    "take_turn": {STARTING: SERVING, HANDING_OVER: SERVING, DRAINING: DRAINING},
    "incoming_gone": {STARTING: NO_READER, HANDING_OVER: SERVING, DRAINING: DRAINING},
    "reader_gone": {SERVING: NO_READER, HANDING_OVER: STARTING, DRAINING: DRAINING},
    "drain": {state: DRAINING for state in SlotState},
}


class IllegalMove(AssertionError):
    """An event the slot's state does not allow: a bug in the master."""


@dataclasses.dataclass
class Backoff:
    """1 s, 2 s, 4 s ... up to MAX_BACKOFF between a slot's failures (a
    worker that cannot start, or that fails by itself), from 1 s again once
    the slot has gone 2 x MAX_BACKOFF without one."""
    failures: int = 0
    failed_at: float = -NEVER
    retry_at: float = 0.0  # no worker starts for the slot before

    def failed(self, now: float) -> float:
        """Count a failure at `now`; the delay before the next attempt."""
        if now - self.failed_at > 2 * MAX_BACKOFF:
            self.failures = 0
        self.failures += 1
        self.failed_at = now
        delay = min(2.0 ** (self.failures - 1), MAX_BACKOFF)
        self.retry_at = now + delay
        return delay


class Slot:
    def __init__(self, index: int, listener: Listener) -> None:
        self.index = index
        self.listener = listener
        self.state = SlotState.NO_READER
        self.reader: Optional[WorkerProcess] = None    # reads it (or is leaving it)
        self.incoming: Optional[WorkerProcess] = None  # getting ready to take over
        self.served = False     # has had a reader: a failed start is retried
        self.backoff = Backoff()
        self.handover_at = NEVER  # the reader was told to let go: the incoming reads by then

    def _move(self, event: str) -> None:
        try:
            self.state = MOVES[event][self.state]
        except KeyError:
            raise IllegalMove(f"{self}: {event} while {self.state.value}") from None

    # -- the events ----------------------------------------------------------------

    def start(self, worker: WorkerProcess) -> None:
        """A worker was spawned to read the slot once ready."""
        assert self.incoming is None
        self._move("start")
        self.incoming = worker

    def take_turn(self) -> WorkerProcess:
        """The incoming worker reads from now on; the old reader, if any,
        was told to let go and is no longer the slot's."""
        new = self.incoming
        assert new is not None
        self._move("take_turn")
        self.reader, self.incoming = new, None
        self.served, self.handover_at = True, NEVER
        return new

    def incoming_gone(self) -> None:
        """The incoming worker failed to start, or was dismissed."""
        assert self.incoming is not None
        self._move("incoming_gone")
        self.incoming = None

    def reader_gone(self) -> None:
        """The reader exited."""
        assert self.reader is not None
        self._move("reader_gone")
        self.reader = None

    def forget_incoming(self, deadline: float) -> None:
        """Stop an incoming worker that has not read anything; it exits
        unattached, by `deadline`."""
        if self.incoming is not None:
            self.incoming.dismiss(deadline)
            self.incoming_gone()

    def drain(self) -> None:
        """The socket left the group: what it holds is read, then it closes."""
        self._move("drain")

    # -- what follows from the state --------------------------------------------------

    @property
    def draining(self) -> bool:
        return self.state is SlotState.DRAINING

    @property
    def incoming_ready(self) -> bool:
        """The incoming worker is set up, waiting for its turn to read."""
        return self.incoming is not None and self.incoming.state is State.READY

    def wants_worker(self, generation: int, now: float) -> bool:
        """Whether a worker should start for the slot now: nobody reads it,
        or its reader is due for replacement (a rolling restart of a later
        `generation`, --max-packets), and the back-off allows."""
        if self.incoming is not None or now < self.backoff.retry_at:
            return False
        old = self.reader
        return old is None or (old.state is State.SERVING and not self.draining
                               and (old.generation < generation or old.replace_due))

    def replacement(self, listener: Listener) -> "Slot":
        """A slot of the same number on a fresh socket, for this one's place in
        the group once it leaves it; it has served, and keeps the back-off."""
        slot = Slot(self.index, listener)
        slot.served, slot.backoff = True, dataclasses.replace(self.backoff)
        return slot

    @property
    def reported(self) -> str:
        """The state `udp-reader status` and metrics show: draining, no
        reader, or its reader's own (workers.State)."""
        if self.draining:
            return SlotState.DRAINING.value
        if self.reader is None:  # starting too: nobody reads it yet
            return SlotState.NO_READER.value
        return self.reader.state.value

    def __str__(self) -> str:
        return f"slot {self.index}"


class AfterFailedStart(enum.Enum):
    """What follows when a worker for a slot cannot start."""
    REFUSE = "the server cannot start"               # the first workers: a wrong input
    RETRY = "the draining slot tries again"          # after its back-off
    KEEP_READER = "the running worker carries on"    # a rolling restart aborts
    REMOVE = "the slot goes"                         # it never had a reader (TTIN)
    RETRY_OFF_PORT = "no reader: tried again; the others take its traffic meanwhile"


def after_failed_start(slot: Slot, starting_up: bool) -> AfterFailedStart:
    """`starting_up`: the server has not served yet (nor has a master it
    upgrades from)."""
    if starting_up:
        return AfterFailedStart.REFUSE
    if slot.draining:
        return AfterFailedStart.RETRY
    if slot.reader is not None:
        return AfterFailedStart.KEEP_READER
    if not slot.served:
        return AfterFailedStart.REMOVE
    return AfterFailedStart.RETRY_OFF_PORT
