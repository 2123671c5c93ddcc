"""The `udp-reader serve` master: one loop that never blocks, over slots and
the workers that read them.

A slot is one reader's place on the port: its socket (its own SO_REUSEPORT
socket, or with --shared and under socket activation, the one socket all
slots read) and the worker reading it. A rolling restart passes each slot's
socket to a new worker like a baton: the new one gets ready without
reading, the old one finishes the receive it holds and says so, then the new
one reads. The group never changes, so neither does any flow's slot.

Signals are a table (Arbiter.handlers, one handle_* method per signal;
what each asks: signals.py); each handler only records what was asked, and
the loop advances every slot and worker a step at a time. Signals are read
from the wake-up pipe, one byte per delivery, so a burst of TTINs counts
each one the kernel delivered (two sent within microseconds of each other
may still merge: standard signals do not queue).

Here are the loop, the signal table, each slot's step and stopping; the
decisions live beside it, each in a file named for it:

    phase.py      the master's phase and how it stops
    slots.py      a slot's states, its back-off, what a failed start leads to
    group.py      the port's group: slots in it and draining; TTIN, TTOU; --steer
    deadlines.py  how long a worker may take to start, to answer, to leave
    sources.py    where the sockets come from (bound, systemd, inherited, taken over)
    holders.py    the other masters holding them (predecessor, USR2, takeover)
    counters.py   what is counted; report.py what is shown (snapshot, drops)

Time (`now`) and processes (processes.py) come in from outside, so unit
tests drive the master with neither (tests/unit/test_arbiter.py).
"""

from __future__ import annotations

import collections
import logging
import os
import selectors
import signal
import socket
from typing import Callable, Deque, Dict, Optional, Tuple

from udp_reader import handoff, sockets, systemd
from udp_reader.errors import describe
from udp_reader.serve import clock, counters, deadlines, exits, foreground, privileges
from udp_reader.serve import protocol, report, sources, state, statusfile
from udp_reader.serve import metrics  # --metrics
from udp_reader.serve.config import Config
from udp_reader.serve.errors import StartError
from udp_reader.serve.exits import ExitCause, exit_reason
from udp_reader.serve.group import Group
from udp_reader.serve.holders import Holders
from udp_reader.serve.orders import WorkerOrders
from udp_reader.serve.phase import Phase, Stop
from udp_reader.serve.pidfile import PidFile
from udp_reader.serve.processes import Processes
from udp_reader.serve.signals import EXACT_TTIN, EXACT_TTOU, signal_line
from udp_reader.serve.slots import AfterFailedStart, Slot, SlotState, after_failed_start
from udp_reader.serve.snapshot import Snapshot
from udp_reader.serve.workers import NEVER, State, WorkerProcess

__all__ = ["Arbiter", "StartError"]

log = logging.getLogger("udp_reader")

TICK = 0.1              # longest the loop sleeps
# Longest a ready worker waits for the reader it replaces to let go, and a
# ready new master for the old one to leave.
HANDOVER_WAIT = 1.0


class Arbiter:
    def __init__(self, config: Config, processes: Optional[Processes] = None,
                 now: Callable[[], float] = clock.now) -> None:
        self.config = config
        self.processes = processes or Processes()
        self.now = now
        self.phase = Phase.STARTING
        self.stop: Optional[Stop] = None  # how, once STOPPING
        self.announced = False    # READY told (pid file, handoff, service manager)
        self.restarting = False   # a rolling restart (HUP) is under way
        self.upgrade_asked = False  # USR2: done once no restart is under way
        self.interrupts = 0
        self.group = Group(config)  # the port's slots
        self.workers: Dict[int, WorkerProcess] = {}
        self.generation = 0       # of rolling restarts: a reader of an older one is replaced
        self.handover_deadline = NEVER  # HANDOVER: read by then, the old master gone or not
        self.address = ""
        self.credentials: Optional[privileges.Credentials] = None
        self.state_dir: Optional[str] = None  # the handlers' state (state.py)
        self.owns_state_dir = False  # not --state-dir: removed at the final stop
        self.signals: Deque[int] = collections.deque()
        self.selector = selectors.DefaultSelector()
        self._wakeup: Optional[Tuple[int, int]] = None
        self.pid_file: Optional[PidFile] = None
        self.handoff_path: Optional[str] = None
        self.handoff_server: Optional[handoff.HandoffServer] = None
        self.holders = Holders(self.selector)
        self.counts = counters.Counts()
        self.next_watch = 0.0
        self.notified = ""  # the last STATUS= line told the service manager
        self.metrics: Optional[metrics.MetricsServer] = None  # --metrics
        self.latest: Optional[Snapshot] = None  # last published; the metrics thread reads it
        self.handlers: Dict[int, Callable[[], None]] = {
            signal.SIGHUP: self.handle_hup,
            signal.SIGTERM: self.handle_term,
            signal.SIGINT: self.handle_int,
            signal.SIGQUIT: self.handle_quit,
            signal.SIGTTIN: self.handle_ttin,
            signal.SIGTTOU: self.handle_ttou,
            EXACT_TTIN: self.handle_ttin,
            EXACT_TTOU: self.handle_ttou,
            signal.SIGUSR2: self.handle_usr2,
        }

    # -- set-up and the loop ---------------------------------------------------------

    def run(self) -> int:
        try:
            self._setup()
            code = self._loop()
        finally:
            self._close()
        return foreground.follow(self.holders.new_master, code)  # after USR2 in a terminal

    def _setup(self) -> None:
        c = self.config
        try:
            if c.pid_file:
                try:
                    self.pid_file = self.holders.pid_file = PidFile(c.pid_file)
                except OSError as e:
                    raise StartError(f"cannot write pid file {c.pid_file}: "
                                     f"{e.strerror or e}") from None
            if c.handoff_dir:
                self.handoff_path = handoff.private_path(c.handoff_dir)
            self.credentials = privileges.resolve(c.user, c.group)
            self._open()
            self._state_dir()
        except OSError as e:
            raise StartError(describe(e)) from None
        except ValueError as e:
            raise StartError(str(e)) from None
        if c.metrics:  # bound before any worker starts: a port in use is a set-up error
            try:
                self.metrics = metrics.bind(c.metrics, lambda: self.latest,
                                            share=self.holders.predecessor is not None
                                            or bool(c.takeover_dir))
            except metrics.MetricsError as e:
                raise StartError(str(e)) from None
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup = (read_end, write_end)
        self.selector.register(read_end, selectors.EVENT_READ, "wakeup")
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        # The C-level handler writes each delivery's number to the pipe;
        # Python's own handler calls merge, so they do nothing.
        for sig in (*self.handlers, signal.SIGCHLD):
            signal.signal(sig, lambda signum, _frame: None)

    def _open(self) -> None:
        opened = sources.open_slots(self.config)
        if opened.peer is not None:
            self.holders.add_peer(opened.peer)
        if opened.predecessor is not None:
            self.holders.watch_predecessor(opened.predecessor)
        self.group.slots, self.group.shared = opened.slots, opened.shared
        self.group.target, self.group.port = opened.target, opened.port

    def _state_dir(self) -> None:
        """--state-dir, or the directory the master we upgrade from made, or
        a new one. Raises OSError."""
        inherited = self.holders.predecessor and self.holders.predecessor.state_dir
        if self.config.state_dir is not None:
            self.state_dir = self.config.state_dir
            state.own(self.state_dir, self.credentials)
        elif inherited and os.path.isdir(inherited):
            self.state_dir, self.owns_state_dir = inherited, True
        else:
            self.state_dir, self.owns_state_dir = state.make_dir(self.credentials), True
        self.group.state_dir = self.state_dir

    def _loop(self) -> int:
        while True:
            self._wait()
            code = self.step()
            if code is not None:
                return code

    def step(self) -> Optional[int]:
        """One turn of the loop, after what woke it was taken in: workers
        that ended, the signals, each slot a step; the exit status once stopped."""
        self._reap()
        while self.signals:
            number = self.signals.popleft()
            handler = self.handlers.get(number)
            if handler is not None:
                log.info("%s", signal_line(number))
                handler()
        self.holders.check_new_master()
        now = self.now()
        if self.phase is not Phase.STOPPING:
            self._advance(now)
        self._check_deadlines(now)
        if now >= self.next_watch:
            report.watch_drops(self)
            self._publish()
            self.next_watch = now + 1.0
        self._notify_serving()
        if self.phase is Phase.STOPPING and not self.workers:
            return self._finish()
        return None

    def _wait(self) -> None:
        for key, _ in self.selector.select(TICK):
            data = key.data
            if data == "wakeup":
                try:
                    while chunk := os.read(key.fd, 512):
                        self.signals.extend(chunk)  # one signal number per byte
                except BlockingIOError:
                    pass
            elif data == "handoff":
                assert self.handoff_server is not None
                self.holders.offer(self.handoff_server, self.group.handed())
            elif data == "predecessor":
                carried = self.holders.predecessor_left()
                if carried is not None:
                    self.counts.carry_over(carried, self.group.listeners())
            elif data == "new master":
                self._new_master_spoke()
            elif isinstance(data, socket.socket):
                self.holders.peer_spoke(data)
            elif not data.read_status():
                self.selector.unregister(key.fd)

    # -- signals ---------------------------------------------------------------------

    def handle_hup(self) -> None:
        if self.phase is not Phase.RUNNING:
            log.info("HUP ignored while %s", self.phase.value)
            return
        self.generation += 1
        if not self.restarting:
            self.restarting = True
            systemd.notify_reloading()
        log.info("rolling restart of %d worker(s)", len(self.group.slots))

    def handle_term(self) -> None:
        self._stop_service(signal.SIGTERM, Stop.GRACEFUL)

    def handle_int(self) -> None:
        self.interrupts += 1  # Ctrl-C twice: fast
        self._stop_service(signal.SIGINT, Stop.FAST if self.interrupts > 1 else Stop.GRACEFUL)

    def handle_quit(self) -> None:
        self._stop_service(signal.SIGQUIT, Stop.FAST)

    def handle_ttin(self) -> None:
        if self.phase is Phase.STOPPING:
            return
        if self.holders.new_master is not None:
            # The new master has our sockets as they were: a slot added
            # here would leave with us.
            log.warning("TTIN ignored: an upgrade is under way; send it to the new master "
                        "once it is ready")
        elif not self.group.may_grow():
            log.warning("TTIN ignored: --steer cpu runs one worker per CPU (%d)",
                        len(self.group.cpus))
        else:
            self.group.target += 1

    def handle_ttou(self) -> None:
        if self.phase is Phase.STOPPING:
            return
        if self.group.target <= 1:
            log.warning("TTOU ignored: one worker is the fewest")
        elif not self.group.shared and self.holders.co_held():
            log.warning("TTOU ignored: another master holds these sockets too; "
                        "ask again once it is gone")
        else:
            self.group.target -= 1

    def handle_usr2(self) -> None:
        if self.holders.new_master is not None:
            log.warning("USR2 ignored: an upgrade is already under way")
        elif self.phase is not Phase.STOPPING:
            self.upgrade_asked = True  # done once no restart is under way

    def _stop_service(self, sig: int, how: Stop) -> None:
        """TERM, INT or QUIT; during an upgrade, the new master's too."""
        self.holders.pass_stop(sig)
        self._begin_stop(how)

    # -- advancing slots -------------------------------------------------------------

    def _advance(self, now: float) -> None:
        if self.phase is Phase.STARTING and all(s.incoming_ready for s in self.group.slots):
            self._all_ready(now)
        if self.phase is Phase.HANDOVER and (not self.holders.predecessor_here
                                             or now >= self.handover_deadline):
            if self.holders.predecessor_here:
                log.warning("the old master is still leaving after %.0f s; reading anyway",
                            HANDOVER_WAIT)
            self.phase = Phase.RUNNING
        if self.phase is Phase.RUNNING:
            self.group.resize(now + self._leave_limit(), now + deadlines.FAST_STOP)
        for slot in self.group.every():
            self._advance_slot(slot, now)
        self.group.steer()
        if self.phase is not Phase.RUNNING:
            return
        if not self.announced and all(s.reader is not None for s in self.group.slots):
            self._announce()
        settled = all(s.state is SlotState.SERVING and s.reader is not None
                      and s.reader.generation == self.generation for s in self.group.slots)
        if settled and self.restarting:
            self.restarting = False
            self.counts.events["restarts"] += 1
            log.info("rolling restart complete")
            systemd.notify("READY=1", self._serving_line())
        if settled and self.upgrade_asked:
            self.upgrade_asked = False
            self.holders.start_new_master(self.processes, self.config.argv, self.group.handed(),
                                          self.group.target,
                                          self.state_dir if self.owns_state_dir else None)

    def _advance_slot(self, slot: Slot, now: float) -> None:
        old = slot.reader
        if slot.incoming is None:
            if slot.wants_worker(self.generation, now):
                self._spawn(slot)
            return
        if not slot.incoming_ready or self.phase is not Phase.RUNNING:
            return
        if old is None:
            self._take_turn(slot)
        elif old.state is State.SERVING:
            old.tell(protocol.RETIRE, State.LEAVING, now + self._leave_limit())
            slot.handover_at = now + HANDOVER_WAIT
        elif old.released or now >= slot.handover_at:
            if not old.released:
                log.warning("%r has not let go of %s after %.0f s (its handler is busy); "
                            "the new worker reads meanwhile", old, slot, HANDOVER_WAIT)
            self._take_turn(slot)

    def _spawn(self, slot: Slot) -> None:
        c = self.config
        orders = WorkerOrders.for_slot(c, self.credentials,
                                       self.group.cpu(slot) if c.steer == "cpu" else None,
                                       self.state_dir)
        try:
            worker = self.processes.spawn_worker(slot.listener, slot.index, self.generation,
                                                 orders, c.start_timeout)
        except OSError as e:
            self._start_failed(slot, f"cannot start a worker: {e.strerror or e}")
            return
        self.workers[worker.pid] = worker
        self.selector.register(worker.status_fd, selectors.EVENT_READ, worker)
        slot.start(worker)
        self.counts.events["worker_starts"] += 1

    def _take_turn(self, slot: Slot) -> None:
        """The slot's incoming worker reads from now on (or drains, if the
        slot left the group)."""
        new = slot.incoming
        assert new is not None
        try:
            self.group.bind(slot)
        except OSError as e:
            slot.forget_incoming(self.now() + deadlines.FAST_STOP)
            self._start_failed(slot, describe(e))
            return
        if slot.draining:
            new.tell(protocol.DRAIN, State.LEAVING, self.now() + self._leave_limit())
        else:
            new.tell(protocol.GO, State.SERVING, NEVER)
        slot.take_turn()
        log.info("worker %d ready on %s", new.pid, slot)

    def _start_failed(self, slot: Slot, why: str) -> None:
        """A worker for `slot` could not start (it is no longer the slot's)."""
        starting_up = self.phase is Phase.STARTING or (
            not self.announced and self.holders.predecessor is None)
        outcome = after_failed_start(slot, starting_up)
        if outcome is AfterFailedStart.REFUSE:
            raise StartError(why)
        if outcome is AfterFailedStart.RETRY:
            self._retry_later(slot, why)
        elif outcome is AfterFailedStart.KEEP_READER:
            if self.restarting:
                log.error("%s; rolling restart aborted, the running workers carry on", why)
                self.restarting = False  # not complete: never reported as a restart
                self.counts.events["restarts_aborted"] += 1
                systemd.notify("READY=1", self._serving_line())
            else:
                log.error("%s; %r carries on", why, slot.reader)
            slot.backoff.failed(self.now())  # a worker due for replacement (--max-packets) waits
            for other in self.group.slots:  # the running workers are current again
                if other.state is SlotState.HANDING_OVER:
                    other.forget_incoming(self.now() + deadlines.FAST_STOP)
                if other.reader is not None:
                    other.reader.generation, other.reader.replace_due = self.generation, False
        elif outcome is AfterFailedStart.REMOVE:
            log.error("%s; the running workers carry on", why)
            self.group.remove(slot)
        else:
            self._retry_later(slot, why)
            # A fresh socket (this slot left the port before) joins it only
            # with its first reader: until then there is nothing to take off.
            on_port = slot.listener.unbound is None
            others_read = any(s.reader is not None for s in self.group.slots)
            if (on_port and others_read and not self.group.shared
                    and self.holders.may_shed(slot.listener)):
                self.group.off_port(slot, self.now() + self._leave_limit())

    def _retry_later(self, slot: Slot, why: str) -> None:
        delay = slot.backoff.failed(self.now())
        log.error("%s; %s has no reader, trying again in %.0f s", why, slot, delay)

    def _all_ready(self, now: float) -> None:
        for slot in self.group.slots:
            slot.served = True  # from here on a failed worker is replaced, not given up
        if self.holders.predecessor_here:
            self.holders.tell_predecessor_to_leave()
            self.phase, self.handover_deadline = Phase.HANDOVER, now + HANDOVER_WAIT
        else:
            self.phase = Phase.RUNNING

    def _announce(self) -> None:
        self.announced = True
        if self.pid_file is not None:
            self.pid_file.write()
        if self.handoff_path is not None:
            self.handoff_server = handoff.HandoffServer(self.handoff_path)
            self.selector.register(self.handoff_server.fileno(), selectors.EVENT_READ, "handoff")
        host, port = self.group.slots[0].listener.sock.getsockname()[:2]
        self.address = sockets.format_address(host, port)
        what = self.config.handler or f"a forward to {self.config.forward}"
        log.info("serving %s on %s with %d worker(s)%s", what, self.address,
                 len(self.group.slots), " on one shared socket" if self.group.shared else "")
        systemd.notify("READY=1", self._serving_line(), f"MAINPID={os.getpid()}")
        self._publish()
        if self.metrics is not None:
            self.metrics.start()
            log.info("metrics on %s", self.metrics.url)

    # -- workers that end --------------------------------------------------------------

    def _reap(self) -> None:
        for worker in list(self.workers.values()):
            code = worker.poll()
            if code is not None:
                self._exited(worker, code)

    def _exited(self, worker: WorkerProcess, code: int) -> None:
        worker.read_status()
        if worker.status_fd in self.selector.get_map():
            self.selector.unregister(worker.status_fd)
        worker.close()
        del self.workers[worker.pid]
        self.counts.worker_ended(worker)
        slot = next((s for s in self.group.every()
                     if worker in (s.reader, s.incoming)), None)
        why = exits.cause(worker, code, slot is not None and slot.incoming is worker)
        self.counts.events[why.event] += 1
        if why is ExitCause.FAILED_START:
            assert slot is not None
            slot.incoming_gone()
            self._start_failed(slot, "a new worker failed to start: "
                               + (worker.error or exit_reason(code)))
            return
        if slot is not None:
            slot.reader_gone()
        lost = exits.may_have_lost(worker, self.config.reader)
        if why is ExitCause.DISMISSED:
            log.info("%r stopped before it read anything", worker)
        elif why is ExitCause.LEFT:
            log.info("%r left after delivering %s packet(s)", worker,
                     worker.stats.get("delivered", "?"))
            if slot is not None and slot.draining:
                self.group.drained(slot)
        elif why is ExitCause.KILLED:
            log.error("%r was killed%s", worker, lost)
        elif slot is None or self.phase is Phase.STOPPING:
            log.error("%r failed while leaving (%s)%s", worker, exit_reason(code), lost)
        elif code > 0:
            # It failed by itself (its reader, the handler's sys.exit):
            # likely again at once, so the replacement backs off.
            delay = slot.backoff.failed(self.now())
            log.error("%r died (%s)%s; a new worker takes over its socket and queue "
                      "in %.0f s", worker, exits.described(worker, code), lost, delay)
        else:
            log.error("%r died (%s)%s; a new worker takes over its socket and queue",
                      worker, exits.described(worker, code), lost)

    def _check_deadlines(self, now: float) -> None:
        for worker in self.workers.values():
            worker.read_status()  # what came while the master was busy or paused counts
        deadlines.enforce(list(self.workers.values()), now, self.config, self.stop)

    def _leave_limit(self) -> float:
        return deadlines.leave_limit(self.config, self.stop)

    # -- stopping ------------------------------------------------------------------------

    def _begin_stop(self, how: Stop) -> None:
        if self.phase is Phase.STOPPING and (self.stop is Stop.FAST or how is Stop.GRACEFUL):
            return
        self.stop = how
        fast = how is Stop.FAST
        first = self.phase is not Phase.STOPPING
        self.phase = Phase.STOPPING
        now = self.now()
        if first:
            systemd.notify("STOPPING=1")
        log.info("%s stop of %d worker(s)", how.value, len(self.workers))
        for slot in self.group.every():
            listener, worker = slot.listener, slot.reader
            # Mid-handover the reader was told to let go and reads no more:
            # the ready incoming worker is the one left to drain the socket.
            handing_over = (slot.incoming_ready and worker is not None
                            and worker.state is State.LEAVING)
            if fast or listener.unbound is not None or not handing_over:
                slot.forget_incoming(now + deadlines.FAST_STOP)
            if fast or listener.unbound is not None:
                continue
            # Sockets nobody else holds leave the port and are drained; the
            # others stay with their other holders.
            if self.holders.may_shed(listener):
                try:
                    listener.leave_group()
                except OSError as e:  # its workers then finish what they hold
                    log.error("cannot shed the socket of %s: %s", slot, describe(e))
            if handing_over and listener.shed:
                slot.take_turn().tell(protocol.DRAIN, State.LEAVING, now + self._leave_limit())
            elif handing_over:
                slot.forget_incoming(now + deadlines.FAST_STOP)  # the other holders read it
            elif worker is not None and worker.state is State.SERVING:
                # Retire: a worker of the new master follows on the slot and
                # takes the handler's state; drain: nobody does, it flushes.
                follows = not listener.shed and self.holders.new_master is not None
                worker.tell(protocol.RETIRE if follows else protocol.DRAIN,
                            State.LEAVING, now + self._leave_limit())
        for worker in self.workers.values():
            if worker.state in (State.STARTING, State.READY):
                worker.dismiss(now + deadlines.FAST_STOP)
            elif fast:
                worker.tell(protocol.QUIT, State.LEAVING, now + deadlines.FAST_STOP)

    def _finish(self) -> int:
        report.watch_drops(self)
        t = self.counts.totals
        log.info("stopped: %d received, %d delivered, %d filtered, %d kernel drops",
                 t["received"], t["delivered"], t["too_short"] + t["too_long"],
                 self.counts.kernel_drops)
        return 0

    def _close(self) -> None:
        for worker in self.workers.values():  # left only by an error
            worker.kill()
            worker.close()
        for slot, listener in self.group.listeners():
            left = listener.close(discard=self.holders.may_shed(listener))
            if left:
                log.warning("%d datagram(s) still queued on the socket of %s were "
                            "discarded at close", left, slot)
        self.holders.close()
        if self.handoff_server is not None:
            self.handoff_server.close()
        if self.pid_file is not None:
            self.pid_file.remove()
            statusfile.remove(statusfile.path_for(self.pid_file.path))
        if self.metrics is not None:
            self.metrics.close()
        if self._wakeup is not None:
            signal.set_wakeup_fd(-1)
            for fd in self._wakeup:
                os.close(fd)
        self.selector.close()
        if self.holders.new_master is not None:  # an upgrade: it counts on from ours
            self.holders.new_master.leave(self.counts.carried(self.group.listeners()))
        elif self.owns_state_dir and self.state_dir is not None \
                and not self.holders.predecessor_here:
            # The final stop: nobody follows. (A new master that fails while
            # the old one still serves leaves the directory to it.)
            state.remove_dir(self.state_dir)

    # -- the upgrade (USR2) ----------------------------------------------------------------

    def _new_master_spoke(self) -> None:
        if self.holders.new_master_said_ready() and self.phase is not Phase.STOPPING:
            assert self.holders.new_master is not None
            self.holders.new_master_ready = True
            log.info("the new master %d is ready; this master leaves",
                     self.holders.new_master.pid)
            self._begin_stop(Stop.GRACEFUL)

    # -- telling the operator ----------------------------------------------------------------

    def _publish(self) -> None:
        if not self.announced or (self.pid_file is None and self.metrics is None):
            return
        self.latest = report.snapshot(self)  # a new one each time, never changed once published
        if self.pid_file is not None:
            try:
                statusfile.write(statusfile.path_for(self.pid_file.path), self.latest.as_dict())
            except OSError as e:
                log.warning("cannot write the status file: %s", describe(e))

    def _serving_line(self) -> str:
        # A slot whose reader hands over to its incoming worker still has a reader.
        serving = sum(1 for s in self.group.slots if s.reader is not None)
        return f"STATUS={serving} workers on {self.address}"

    def _notify_serving(self) -> None:
        line = self._serving_line()
        if line != self.notified and self.announced:
            self.notified = line
            systemd.notify(line)
