"""The serve master's decisions, driven in-process: a fake clock, fake
worker processes (real WorkerProcess objects over pipes, with no process
behind them) and a fake new master. No socket, no child process; each test
runs in milliseconds.

The test plays every worker: it says what a worker says on its status pipe
(protocol.py), reads the commands the master wrote, and ends it.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
from typing import List, Optional, Set

import pytest

from udp_reader.serve import arbiter, clock, protocol, report, sources
from udp_reader.serve.arbiter import Arbiter, StartError
from udp_reader.serve.config import Config
from udp_reader.serve.phase import Phase, Stop
from udp_reader.serve.slots import (MAX_BACKOFF, AfterFailedStart, Backoff, IllegalMove, Slot,
                                    SlotState, after_failed_start)
from udp_reader.serve.workers import State, WorkerProcess

START_TIMEOUT = 5.0
TIMEOUT = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeProc:
    """What WorkerProcess asks of its process."""
    pids = itertools.count(50000)

    def __init__(self) -> None:
        self.pid = next(self.pids)
        self.returncode: Optional[int] = None
        self.signals: List[int] = []

    def poll(self) -> Optional[int]:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)

    def wait(self) -> int:
        assert self.returncode is not None
        return self.returncode


class Worker:
    """The test's end of one worker: its status pipe and its commands."""

    def __init__(self, process: WorkerProcess, status: int, control: int) -> None:
        self.process = process
        self.proc: FakeProc = process.proc  # type: ignore[assignment]
        self._status, self._control = status, control
        self._heard = b""

    def say(self, **message: object) -> None:
        os.write(self._status, protocol.encode(**message))

    def commands(self) -> List[str]:
        """Every command the master wrote so far."""
        try:
            while chunk := os.read(self._control, 4096):
                self._heard += chunk
        except BlockingIOError:
            pass
        return self._heard.decode().split()

    def exit(self, code: int) -> None:
        self.proc.returncode = code

    @property
    def state(self) -> State:
        return self.process.state

    def close(self) -> None:
        for fd in (self._status, self._control):
            os.close(fd)


class FakeNewMaster:
    """A USR2 new master: ready when the test writes its byte."""

    def __init__(self) -> None:
        self.pid = next(FakeProc.pids)
        self.ready_fd, self._ready = os.pipe2(os.O_NONBLOCK)
        self.returncode: Optional[int] = None
        self.signals: List[int] = []
        self.carried: Optional[dict] = None

    def ready(self) -> None:
        os.write(self._ready, b"R")

    def poll(self) -> Optional[int]:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)

    def leave(self, carried: dict) -> None:
        self.carried = carried


class FakeProcesses:
    def __init__(self, now: FakeClock) -> None:
        self.now = now
        self.started: List[Worker] = []
        self.refuse: Set[int] = set()  # slots whose next spawn fails as the system would
        self.new_masters: List[FakeNewMaster] = []

    def spawn_worker(self, listener, slot, generation, orders, start_timeout) -> WorkerProcess:
        if slot in self.refuse:
            self.refuse.discard(slot)
            raise OSError(11, "Resource temporarily unavailable")
        status_read, status_write = os.pipe2(os.O_NONBLOCK)
        control_read, control_write = os.pipe2(os.O_NONBLOCK)
        process = WorkerProcess(FakeProc(), slot, generation,  # type: ignore[arg-type]
                                status_read, control_write, self.now() + start_timeout)
        self.started.append(Worker(process, status_write, control_read))
        return process

    def start_new_master(self, argv, handed, workers, state_dir) -> FakeNewMaster:
        new = FakeNewMaster()
        self.new_masters.append(new)
        return new


class FakeSock:
    def getsockname(self) -> tuple:
        return ("127.0.0.1", 9999)


class FakeListener:
    """A socket already on the port (listeners.Listener's surface)."""

    def __init__(self) -> None:
        self.sock = FakeSock()
        self.unbound = None
        self.external = False
        self.passed = False
        self.shed = False
        self.drops_seen = 0
        self.closed = False

    def leave_group(self) -> None:
        self.shed = True

    def queued(self) -> int:
        return 0

    def new_drops(self) -> int:
        return 0

    def close(self, discard: bool) -> int:
        self.closed = True
        return 0


class Master:
    """An Arbiter with fakes around it, and the moves a test makes."""

    def __init__(self, workers: int = 1, **options: object) -> None:
        self.now = FakeClock()
        self.processes = FakeProcesses(self.now)
        config = Config(handler="handlers:echo", bind="127.0.0.1:9999", workers=workers,
                        start_timeout=START_TIMEOUT, timeout=TIMEOUT,
                        argv=("serve",), **options)  # type: ignore[arg-type]
        self.arbiter = Arbiter(config, processes=self.processes,  # type: ignore[arg-type]
                               now=self.now)
        shared = FakeListener() if config.shared else None
        self.arbiter.group.slots = [Slot(i, shared or FakeListener()) for i in range(workers)]

    # -- driving the loop -------------------------------------------------------------

    def step(self, seconds: float = 0.0) -> Optional[int]:
        """One turn of the loop, `seconds` later: what the workers and the new
        master wrote is taken in (the loop's wait, not waiting), then the step."""
        self.now.t += seconds
        self.arbiter._wait()
        return self.arbiter.step()

    def signal(self, sig: int) -> None:
        self.arbiter.signals.append(sig)
        self.step()

    def new_workers(self) -> List[Worker]:
        """Workers started since the last call."""
        seen = getattr(self, "_seen", 0)
        self._seen = len(self.processes.started)
        return self.processes.started[seen:]

    def start(self) -> List[Worker]:
        """Through STARTING: every first worker ready and reading."""
        self.step()
        first = self.new_workers()
        assert len(first) == len(self.arbiter.group.slots)
        for w in first:
            w.say(ready=True)
        self.step()
        assert self.arbiter.phase is Phase.RUNNING and self.arbiter.announced
        assert all(w.commands() == ["go"] for w in first)
        return first

    def slot(self, index: int = 0):
        return next(s for s in self.arbiter.group.slots if s.index == index)

    def close(self) -> None:
        for w in self.processes.started:
            w.close()
            if w.process.pid in self.arbiter.workers:  # never reaped: the master's ends too
                os.close(w.process.status_fd)
                os.close(w.process.control_fd)
        for new_master in self.processes.new_masters:
            os.close(new_master._ready)
        self.arbiter.holders.close()
        self.arbiter.selector.close()


@pytest.fixture
def master(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    made: List[Master] = []

    def make(workers: int = 1, **options: object) -> Master:
        m = Master(workers, **options)
        monkeypatch.setattr(clock, "now", m.now)  # WorkerProcess's clock too
        # The loop's wait only takes what is there.
        monkeypatch.setattr("udp_reader.serve.arbiter.TICK", 0.0)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


# -- a slot's state machine ---------------------------------------------------------------

def test_a_slot_moves_only_as_its_table_allows(master):
    m = master()
    slot = m.slot()
    assert slot.state is SlotState.NO_READER
    m.step()
    assert slot.state is SlotState.STARTING
    first = m.new_workers()[0]
    first.say(ready=True)
    m.step()
    assert slot.state is SlotState.SERVING and slot.reader is first.process
    with pytest.raises(AssertionError):
        slot.take_turn()  # nobody incoming
    assert slot.state is SlotState.SERVING


def test_backoff_doubles_to_its_cap_and_starts_over_after_a_quiet_while():
    b = Backoff()
    delays = [b.failed(100.0 + i) for i in range(7)]
    assert delays == [1, 2, 4, 8, 16, MAX_BACKOFF, MAX_BACKOFF]
    assert b.retry_at == 106.0 + MAX_BACKOFF
    assert b.failed(106.0 + 2 * MAX_BACKOFF + 0.1) == 1


# -- signals during transitions -------------------------------------------------------------

def test_hup_during_start_is_ignored(master):
    m = master(workers=2)
    m.step()
    first = m.new_workers()
    m.signal(signal.SIGHUP)
    assert m.arbiter.phase is Phase.STARTING
    for w in first:
        w.say(ready=True)
    m.step()
    m.step()
    assert m.arbiter.generation == 0 and not m.arbiter.restarting
    assert m.new_workers() == []  # no restart followed
    assert [s.reader for s in m.arbiter.group.slots] == [w.process for w in first]
    assert m.arbiter.counts.events["restarts"] == 0


def test_a_reader_crashing_during_a_baton_handover_leaves_the_new_worker_reading(master):
    m = master()
    (old,) = m.start()
    m.signal(signal.SIGHUP)
    (new,) = m.new_workers()
    assert m.slot().state is SlotState.HANDING_OVER
    new.say(ready=True)
    m.step()
    assert old.commands() == ["go", "retire"] and new.commands() == []
    old.exit(-signal.SIGSEGV)  # dies before it lets go
    m.step()
    assert new.commands() == ["go"]
    assert m.slot().state is SlotState.SERVING and m.slot().reader is new.process
    assert m.arbiter.counts.events["exits_crashed"] == 1
    m.step()
    assert m.arbiter.counts.events["restarts"] == 1 and not m.arbiter.restarting


def test_an_incoming_worker_crashing_during_a_handover_aborts_the_restart(master):
    m = master()
    (old,) = m.start()
    m.signal(signal.SIGHUP)
    (new,) = m.new_workers()
    new.exit(1)  # before it was ready
    m.step()
    assert m.slot().state is SlotState.SERVING and m.slot().reader is old.process
    assert old.commands() == ["go"]  # never asked to let go
    assert m.arbiter.counts.events["restarts_aborted"] == 1 and not m.arbiter.restarting
    assert m.arbiter.counts.events["exits_failed_start"] == 1
    m.step(60)
    assert m.new_workers() == []  # the old worker is current again


def test_term_during_usr2_before_the_new_master_is_ready_stops_both(master):
    m = master()
    (w,) = m.start()
    m.signal(signal.SIGUSR2)
    m.step()
    (new_master,) = m.processes.new_masters
    assert m.arbiter.holders.new_master is new_master
    m.signal(signal.SIGTERM)
    assert new_master.signals == [signal.SIGTERM]
    assert m.arbiter.holders.new_master is None  # abandoned: never read, not waited for
    assert m.arbiter.phase is Phase.STOPPING and m.arbiter.stop is Stop.GRACEFUL
    assert w.commands() == ["go", "drain"]  # ours alone again: shed and drained
    w.exit(0)
    assert m.step() == 0


def test_term_during_usr2_after_the_new_master_is_ready_passes_it_on(master):
    m = master()
    (w,) = m.start()
    m.signal(signal.SIGUSR2)
    m.step()
    (new_master,) = m.processes.new_masters
    new_master.ready()
    m.step()
    assert m.arbiter.phase is Phase.STOPPING
    assert w.commands() == ["go", "retire"]  # the new master holds the socket: not shed
    m.signal(signal.SIGTERM)
    assert new_master.signals == [signal.SIGTERM]
    assert m.arbiter.holders.new_master is new_master  # it serves on; it gets our counters
    w.exit(0)
    assert m.step() == 0


def test_ttin_during_usr2_is_refused(master):
    m = master()
    m.start()
    m.signal(signal.SIGUSR2)
    m.step()
    m.signal(signal.SIGTTIN)
    m.step()
    assert m.arbiter.group.target == 1 and len(m.arbiter.group.slots) == 1
    assert m.new_workers() == []


def test_ttou_is_refused_while_another_master_holds_the_sockets(master):
    m = master(workers=2)
    m.start()
    m.signal(signal.SIGUSR2)
    m.step()
    m.signal(signal.SIGTTOU)
    assert m.arbiter.group.target == 2 and len(m.arbiter.group.slots) == 2
    assert m.arbiter.group.drains == []


def test_ttou_without_another_holder_drains_the_highest_slot(master):
    m = master(workers=2)
    first = m.start()
    m.signal(signal.SIGTTOU)
    assert m.arbiter.group.target == 1 and [s.index for s in m.arbiter.group.slots] == [0]
    (drain,) = m.arbiter.group.drains
    assert drain.state is SlotState.DRAINING and drain.listener.shed
    assert first[1].commands() == ["go", "drain"]


# -- failures and back-off ---------------------------------------------------------------------

def test_a_worker_that_fails_by_itself_is_replaced_after_a_back_off(master):
    m = master()
    (w,) = m.start()
    w.exit(protocol.EXIT_READER_FAILED)
    m.step()
    assert m.slot().state is SlotState.NO_READER
    assert m.arbiter.counts.events["exits_crashed"] == 1
    m.step(0.5)
    assert m.new_workers() == []  # backing off: 1 s
    m.step(0.6)
    (replacement,) = m.new_workers()
    replacement.say(ready=True)
    m.step()
    assert m.slot().reader is replacement.process and replacement.commands() == ["go"]
    replacement.exit(protocol.EXIT_READER_FAILED)
    m.step()
    m.step(1.1)
    assert m.new_workers() == []  # the second failure waits 2 s
    m.step(1.0)
    assert len(m.new_workers()) == 1


def test_a_worker_killed_by_a_signal_is_replaced_at_once(master):
    m = master()
    (w,) = m.start()
    w.exit(-signal.SIGKILL)
    m.step()
    assert len(m.new_workers()) == 1 and m.slot().state is SlotState.STARTING


def test_a_worker_not_ready_within_start_timeout_is_killed_and_the_start_refused(master):
    m = master()
    m.step()
    (w,) = m.new_workers()
    m.step(START_TIMEOUT - 0.1)
    assert w.proc.signals == []
    m.step(0.2)
    assert w.proc.signals == [signal.SIGKILL]
    w.exit(-signal.SIGKILL)
    with pytest.raises(StartError, match=f"not ready within {START_TIMEOUT:g} s"):
        m.step()


def test_a_replacement_not_ready_within_start_timeout_aborts_the_restart(master):
    m = master()
    (old,) = m.start()
    m.signal(signal.SIGHUP)
    (new,) = m.new_workers()
    m.step(START_TIMEOUT + 0.1)
    assert new.proc.signals == [signal.SIGKILL]
    new.exit(-signal.SIGKILL)
    m.step()
    assert m.arbiter.counts.events["restarts_aborted"] == 1
    assert m.slot().reader is old.process and old.state is State.SERVING


def test_timeout_kills_a_handler_that_does_not_return(master):
    m = master()
    (w,) = m.start()
    w.say(stats={"delivered": 5, "busy_for": TIMEOUT - 1})
    m.step(1.0)
    assert w.proc.signals == []
    w.say(stats={"delivered": 5, "busy_for": TIMEOUT + 1})
    m.step(1.0)
    assert w.proc.signals == [signal.SIGUSR2]  # its stack first
    assert w.state is State.KILLED
    m.step(0.6)
    assert w.proc.signals == [signal.SIGUSR2, signal.SIGKILL]
    w.exit(-signal.SIGKILL)
    m.step()
    assert m.arbiter.counts.events["exits_killed"] == 1
    assert len(m.new_workers()) == 1  # replaced at once


def test_max_packets_passes_the_slot_to_a_new_worker(master):
    m = master(max_packets=100)
    (old,) = m.start()
    old.say(recycle=True, stats={"delivered": 100})
    m.step()
    assert old.process.replace_due
    m.step()
    (new,) = m.new_workers()
    new.say(ready=True)
    m.step()
    assert old.commands() == ["go", "retire"]
    old.say(released=True)
    m.step()
    assert new.commands() == ["go"] and m.slot().reader is new.process
    old.exit(0)
    m.step()
    assert m.arbiter.counts.events["exits_left"] == 1
    assert m.arbiter.counts.past[0]["delivered"] == 100
    assert m.new_workers() == []  # the new one is current


def test_a_rolling_restart_aborts_when_a_new_worker_cannot_start(master):
    m = master(workers=2)
    first = m.start()
    m.processes.refuse = {1}  # slot 1's new worker: the system says no
    m.signal(signal.SIGHUP)
    assert m.arbiter.counts.events["restarts_aborted"] == 1 and not m.arbiter.restarting
    (other,) = m.new_workers()  # slot 0's started, then dismissed
    assert other.commands() == ["quit"] and other.proc.signals == [signal.SIGKILL]
    assert all(s.state is SlotState.SERVING for s in m.arbiter.group.slots)
    assert [s.reader for s in m.arbiter.group.slots] == [w.process for w in first]
    m.step(60)
    assert m.new_workers() == []  # nothing left to restart


def test_a_second_int_makes_the_stop_fast(master):
    m = master(workers=2)
    first = m.start()
    m.signal(signal.SIGINT)
    assert m.arbiter.stop is Stop.GRACEFUL
    assert all(w.commands() == ["go", "drain"] for w in first)
    m.signal(signal.SIGINT)
    assert m.arbiter.stop is Stop.FAST
    assert all(w.commands() == ["go", "drain", "quit"] for w in first)
    m.signal(signal.SIGINT)  # a third changes nothing
    assert all(w.commands() == ["go", "drain", "quit"] for w in first)
    for w in first:
        w.exit(0)
    assert m.step() == 0


def test_the_snapshot_keeps_its_shape(master):
    m = master(workers=2)
    m.start()
    shot = m.arbiter.latest
    assert shot is None  # published only with a pid file or --metrics
    data = report.snapshot(m.arbiter).as_dict()
    assert list(data) == ["pid", "address", "time", "phase", "workers", "slots", "events",
                          "kernel_drops", "shared", "metrics", "others"]
    assert list(data["slots"][0]) == ["slot", "state", "queued_bytes", "kernel_drops",
                                      "workers", "totals"]
    assert list(data["slots"][0]["workers"][0]) == ["pid", "state", "started", "stats"]
    assert data["phase"] == "running" and data["address"] == "127.0.0.1:9999"
    assert [s["state"] for s in data["slots"]] == ["serving", "serving"]
    assert data["events"] == {"worker_starts": 2} and data["others"] == {}


def test_an_event_the_state_does_not_allow_is_refused(master):
    m = master()
    slot = m.slot()
    with pytest.raises(IllegalMove):
        slot._move("reader_gone")  # nobody reads it yet
    assert slot.state is SlotState.NO_READER
    slot.drain()
    slot._move("reader_gone")  # a draining slot stays draining
    assert slot.state is SlotState.DRAINING


@pytest.mark.parametrize("starting_up, draining, reader, served, outcome", [
    (True, False, False, False, AfterFailedStart.REFUSE),
    (False, True, False, True, AfterFailedStart.RETRY),
    (False, False, True, True, AfterFailedStart.KEEP_READER),
    (False, False, False, False, AfterFailedStart.REMOVE),
    (False, False, False, True, AfterFailedStart.RETRY_OFF_PORT),
])
def test_what_follows_a_failed_start(master, starting_up, draining, reader, served, outcome):
    m = master()
    slot = m.slot()
    if reader:
        m.start()
    slot.served = served
    if draining:
        slot.drain()
    assert after_failed_start(slot, starting_up) is outcome


def test_the_snapshot_names_the_new_master_while_an_upgrade_is_under_way(master):
    m = master()
    m.start()
    m.signal(signal.SIGUSR2)
    m.step()
    (new_master,) = m.processes.new_masters
    assert report.snapshot(m.arbiter).others == {"new_master": new_master.pid}


def test_ttin_adds_a_slot_with_the_lowest_free_number(master, monkeypatch):
    monkeypatch.setattr(sources, "new_listener", lambda config: FakeListener())
    m = master(workers=2)
    m.start()
    m.signal(signal.SIGTTIN)
    assert [s.index for s in m.arbiter.group.slots] == [0, 1, 2]
    (new,) = m.new_workers()
    assert new.process.slot == 2
    new.say(ready=True)
    m.step()
    assert new.commands() == ["go"] and m.slot(2).state is SlotState.SERVING


def test_term_during_start_dismisses_the_workers_getting_ready(master):
    m = master(workers=2)
    m.step()
    importing, ready = m.new_workers()
    ready.say(ready=True)
    m.step()
    assert m.arbiter.phase is Phase.STARTING  # one is still importing
    m.signal(signal.SIGTERM)
    assert importing.proc.signals == [signal.SIGKILL]  # it cannot hear a command yet
    assert ready.proc.signals == [] and ready.commands() == ["quit"]
    assert all(s.state is SlotState.NO_READER for s in m.arbiter.group.slots)
    importing.exit(-signal.SIGKILL)
    ready.exit(0)
    assert m.step() == 0
    assert m.arbiter.counts.events["exits_dismissed"] == 2


class FakePredecessor:
    """The master we upgrade from: it has left once the test closes its pipe."""

    def __init__(self) -> None:
        self.pid = next(FakeProc.pids)
        self.workers = 1
        self.told = False
        self._watch, self._left = os.pipe2(os.O_NONBLOCK)

    def watch(self) -> int:
        return self._watch

    def tell_to_leave(self) -> None:
        self.told = True

    def leave(self) -> None:
        os.write(self._left, b'{"events": {"restarts": 3}}')
        os.close(self._left)

    def read(self, fd: int) -> Optional[dict]:
        data = b""
        try:
            while chunk := os.read(fd, 4096):
                data += chunk
        except BlockingIOError:
            return None
        return json.loads(data or b"{}")


def test_after_an_upgrade_the_new_workers_read_once_the_old_master_has_left(master):
    m = master()
    old = FakePredecessor()
    m.arbiter.holders.watch_predecessor(old)  # what sources.open_slots found
    m.step()
    (w,) = m.new_workers()
    w.say(ready=True)
    m.step()
    assert old.told and m.arbiter.phase is Phase.HANDOVER
    assert w.commands() == []  # the old master's workers still read
    assert report.snapshot(m.arbiter).others == {"old_master": old.pid}
    old.leave()
    m.step()
    m.step()
    assert m.arbiter.phase is Phase.RUNNING and w.commands() == ["go"]
    assert m.arbiter.counts.events["restarts"] == 3  # counted on from the old master's


def test_an_old_master_slow_to_leave_is_not_waited_for_past_handover_wait(master):
    m = master()
    old = FakePredecessor()
    m.arbiter.holders.watch_predecessor(old)
    m.step()
    (w,) = m.new_workers()
    w.say(ready=True)
    m.step()
    m.step(arbiter.HANDOVER_WAIT - 0.1)
    assert m.arbiter.phase is Phase.HANDOVER and w.commands() == []
    m.step(0.2)
    assert m.arbiter.phase is Phase.RUNNING and w.commands() == ["go"]
    old.leave()


@pytest.mark.parametrize("why", ["hup", "max_packets"])
def test_a_stop_during_a_handover_has_the_incoming_worker_drain_the_socket(master, why):
    """The reader was told to let go (it no longer reads) and the incoming
    worker has not read yet: a stop now must not leave the queue to nobody."""
    m = master(max_packets=100)
    (old,) = m.start()
    if why == "hup":
        m.signal(signal.SIGHUP)
    else:
        old.say(recycle=True, stats={"delivered": 100})
        m.step()
    m.step()
    (new,) = m.new_workers()
    new.say(ready=True)
    m.step()
    assert old.commands() == ["go", "retire"] and new.commands() == []
    m.signal(signal.SIGTERM)
    assert m.slot().listener.shed
    assert new.commands() == ["drain"] and new.state is State.LEAVING
    assert old.commands() == ["go", "retire"]  # it finishes the receive it holds
    for w in (old, new):
        w.exit(0)
    assert m.step() == 0


def test_a_slot_whose_new_socket_never_joined_the_port_is_not_taken_off_it_again(
        master, monkeypatch):
    """Slot 1 has no reader and leaves the port for a fresh socket, which
    joins only once a worker for it is ready: while none can start, that
    socket is not on the port, so there is nothing to take off."""
    fresh: List[FakeListener] = []

    def new_listener(config):
        listener = FakeListener()
        listener.unbound = ("127.0.0.1", 9999)
        fresh.append(listener)
        return listener

    monkeypatch.setattr(sources, "new_listener", new_listener)
    m = master(workers=2)
    first = m.start()
    first[1].exit(protocol.EXIT_READER_FAILED)
    m.processes.refuse = {1}
    m.step()
    m.step(1.1)  # after its back-off, slot 1's worker cannot start
    assert len(fresh) == 1 and len(m.arbiter.group.drains) == 1
    m.processes.refuse = {1}
    m.step(2.1)  # nor the next: the fresh socket stays, unbound, for the next try
    assert len(fresh) == 1 and len(m.arbiter.group.drains) == 1
    assert [s.listener for s in m.arbiter.group.slots if s.index == 1] == fresh
    assert not fresh[0].shed
