"""The `udp-reader serve` master: one loop that never blocks, over slots and
the workers that read them.

A slot is one reader's place on the port: its socket (its own SO_REUSEPORT
socket, or with --shared and under socket activation, the one socket all
slots read) and the worker reading it. A rolling restart passes each slot's
socket to a new worker like a baton: the new one gets ready without
reading, the old one finishes the receive it holds and says so, then the new
one reads. The group never changes, so neither does any flow's slot.

Signals are a table (Arbiter.handlers, one handle_* method per signal);
each handler only records what was asked, and the loop advances every slot
and worker a step at a time. Signals are read from the wake-up pipe, one
byte per delivery, so a burst of TTINs counts each one the kernel delivered
(two sent within microseconds of each other may still merge: standard
signals do not queue):

    HUP         rolling restart (HUPs during one merge into one more)
    TERM        graceful stop; INT too, and a second INT makes it fast
    QUIT        fast stop
    TTIN, TTOU  one slot more, one fewer (the one removed drains)
    USR2        upgrade: a new master takes every socket across exec
"""

from __future__ import annotations

import collections
import enum
import logging
import os
import random
import selectors
import signal
import socket
import time
from typing import Callable, Deque, Dict, Iterator, List, Optional, Tuple

from udp_reader import handoff, multicast, sockets, systemd
from udp_reader.serve import clock, counters, foreground, privileges, protocol, statusfile
from udp_reader.serve import steering, upgrade
from udp_reader.serve import metrics  # --metrics
from udp_reader.serve.config import EXACT_TTIN, EXACT_TTOU, Config
from udp_reader.serve.listeners import Listener
from udp_reader.serve.pidfile import PidFile
from udp_reader.serve.workers import NEVER, State, WorkerProcess, exit_reason, spawn

log = logging.getLogger("udp_reader")

TICK = 0.1              # longest the loop sleeps
HANDOVER_WAIT = 1.0     # longest a ready worker waits for its predecessor to let go
KILL_GRACE = 2.0        # past --graceful-timeout before a leaving worker is killed
FAST_STOP = 5.0         # longest a fast stop waits before it kills
MAX_BACKOFF = 30.0      # between attempts to start a worker for a slot without one



class StartError(Exception):
    """The server cannot start: one line for the operator."""


class Phase(enum.Enum):
    STARTING = "starting"   # first workers getting ready
    HANDOVER = "handover"   # ready; the master we upgrade from is leaving
    RUNNING = "running"
    STOPPING = "stopping"


class Slot:
    def __init__(self, index: int, listener: Listener) -> None:
        self.index = index
        self.listener = listener
        self.worker: Optional[WorkerProcess] = None     # reads it (or is leaving it)
        self.successor: Optional[WorkerProcess] = None  # getting ready to take over
        self.draining = False   # out of the group: read until empty, then closed
        self.served = False     # has had a reader: a failed start is retried
        self.failures = 0
        self.failed_at = -NEVER
        self.retry_at = 0.0
        self.handover_at = NEVER

    def __str__(self) -> str:
        return f"slot {self.index}"


class Arbiter:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.phase = Phase.STARTING
        self.shared = config.shared
        self.slots: List[Slot] = []
        self.drains: List[Slot] = []     # left the group, queue still to read
        self.workers: Dict[int, WorkerProcess] = {}
        self.target = config.workers
        self.generation = 0
        self.reloading = False
        self.upgrade_asked = False
        self.fast = False
        self.interrupts = 0
        self.announced = False
        self.port: Optional[int] = None
        self.address = ""
        self.signals: Deque[int] = collections.deque()
        self.selector = selectors.DefaultSelector()
        self.pid_file: Optional[PidFile] = None
        self.handoff_path: Optional[str] = None
        self.handoff_server: Optional[handoff.HandoffServer] = None
        # Others holding our sockets: a master we upgrade from or to, and
        # takeover peers. While any does, no socket is shed.
        self.predecessor: Optional[upgrade.Predecessor] = None
        self.predecessor_fd: Optional[int] = None
        self.predecessor_told = False  # asked to leave: it no longer serves
        self.new_master: Optional[upgrade.Successor] = None  # USR2
        self.new_master_fd: Optional[int] = None  # it writes a byte here once ready
        self.new_master_ready = False
        self.abandoned: List[upgrade.Successor] = []  # new masters stopped before ready
        self.peers: List[socket.socket] = []
        self.handover_deadline = NEVER
        self.totals: collections.Counter = collections.Counter()
        self.past: Dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        self.events: collections.Counter = collections.Counter()  # starts, exits by cause
        self.kernel_drops = 0
        self.next_watch = 0.0
        self.status = ""
        self.cpus = sorted(os.sched_getaffinity(0))
        self.steered_for = 0
        self.metrics: Optional[metrics.MetricsServer] = None  # --metrics
        self.latest: Optional[dict] = None  # last snapshot published; the metrics thread reads it
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
        return foreground.follow(self.new_master, code)  # after USR2 in a terminal

    def _setup(self) -> None:
        c = self.config
        try:
            if c.pid_file:
                try:
                    self.pid_file = PidFile(c.pid_file)
                except OSError as e:
                    raise StartError(f"cannot write pid file {c.pid_file}: "
                                     f"{e.strerror or e}") from None
            if c.handoff_dir:
                self.handoff_path = handoff.private_path(c.handoff_dir)
            self.credentials = privileges.resolve(c.user, c.group)
            self._open_listeners()
        except OSError as e:
            raise StartError(_text(e)) from None
        except ValueError as e:
            raise StartError(str(e)) from None
        if c.metrics:  # bound before any worker starts: a port in use is a set-up error
            try:
                self.metrics = metrics.bind(c.metrics, lambda: self.latest,
                                            share=self.predecessor is not None
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

    def _open_listeners(self) -> None:
        c = self.config
        self.shared = self.shared or bool(c.join)  # --join: see _join_groups
        self.predecessor, handed = upgrade.inherited()
        if not handed and c.takeover_dir:
            if not os.path.isdir(c.takeover_dir):
                raise StartError(f"--takeover {c.takeover_dir}: no such directory (give the "
                                 "--handoff directory of the running master)")
            conn, handed = upgrade.take_over(c.takeover_dir)
            self._add_peer(conn)
        if self.predecessor is not None:
            self.target = self.predecessor.workers
            try:
                self.predecessor_fd = self.predecessor.watch()
                self.selector.register(self.predecessor_fd, selectors.EVENT_READ, "predecessor")
            except ProcessLookupError:
                pass
        if not handed:
            if not c.bind:
                raise StartError("no address: give --bind or start under socket activation")
            shared = self._new_listener() if self.shared else None
            self.slots = [Slot(i, shared or self._new_listener()) for i in range(self.target)]
            self.slots[0].listener.check_bind()  # before any handler code runs
            self._join_groups()
            return
        for h in handed:
            sockets.check_udp(h.sock)
            if c.reader.rcvbuf is not None:
                sockets.set_rcvbuf(h.sock, c.reader.rcvbuf, at_least=True)
        self.port = handed[0].sock.getsockname()[1]
        if self.shared or handed[0].slot is None or any(h.external for h in handed):
            if c.steer != "hash":
                raise StartError(f"--steer {c.steer} needs a socket per worker; "
                                 "these workers share the one passed")
            self.shared = True
            first = Listener(handed[0].sock, external=handed[0].external, passed=True)
            if len(handed) > 1:
                log.warning("serving only the first of %d sockets passed", len(handed))
            for extra in handed[1:]:
                extra.sock.close()
            self.slots = [Slot(i, first) for i in range(self.target)]
            self._join_groups()
            return
        for h in handed:
            assert h.slot is not None
            self.slots.append(Slot(h.slot, Listener(h.sock, passed=True)))
        self.target = max(self.target, len(self.slots))
        self._add_missing_slots()

    def _join_groups(self) -> None:
        """--join, on the shared socket. Memberships belong to the socket, so
        they pass with it to every worker and to a new master (USR2,
        --takeover), which finds them already joined."""
        if not self.config.join:
            return
        listener = self.slots[0].listener
        bound = listener.unbound[0] if listener.unbound is not None else None
        groups = multicast.Memberships(listener.sock, bound_host=bound)
        for m in self.config.join:
            try:
                joined = groups.join(m.group, interface=m.interface, source=m.source,
                                     rejoin=True)
            except (ValueError, OSError) as e:
                raise StartError(f"--join {m}: {_text(e) if isinstance(e, OSError) else e}") \
                    from None
            log.info("joined %s%s", m.describe(), "" if joined else " (the socket had it already)")
        if not self.config.shared:
            log.info("--join: the workers share one socket, so each multicast datagram is "
                     "handled once (every socket on the port gets its own copy)")

    def _new_listener(self) -> Listener:
        assert self.config.bind is not None  # sockets we bind come from --bind
        sock, sockaddr = sockets.unbound_socket(self.config.bind, reuseport=True,
                                                rcvbuf=self.config.reader.rcvbuf)
        return Listener(sock, sockaddr)

    def _loop(self) -> int:
        while True:
            self._wait()
            self._reap()
            while self.signals:
                handler = self.handlers.get(self.signals.popleft())
                if handler is not None:
                    handler()
            self._check_successor()
            now = clock.now()
            if self.phase is not Phase.STOPPING:
                self._advance(now)
            self._check_deadlines(now)
            if now >= self.next_watch:
                self._watch_drops()
                self._publish()
                self.next_watch = now + 1.0
            self._tell_status()
            if self.phase is Phase.STOPPING and not self.workers:
                return self._finish()

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
                self._offer()
            elif data == "predecessor":
                self._predecessor_gone()
            elif data == "new master":
                self._new_master_spoke()
            elif isinstance(data, socket.socket):
                self._peer_spoke(data)
            elif not data.read_status():
                self.selector.unregister(key.fd)

    # -- signals ---------------------------------------------------------------------

    def handle_hup(self) -> None:
        if self.phase is not Phase.RUNNING:
            log.info("HUP ignored while %s", self.phase.value)
            return
        self.generation += 1
        if not self.reloading:
            self.reloading = True
            systemd.notify_reloading()
        log.info("rolling restart of %d worker(s)", len(self.slots))

    def handle_term(self) -> None:
        self._stop_service(signal.SIGTERM, fast=False)

    def handle_int(self) -> None:
        self.interrupts += 1  # Ctrl-C twice: fast
        self._stop_service(signal.SIGINT, fast=self.interrupts > 1)

    def handle_quit(self) -> None:
        self._stop_service(signal.SIGQUIT, fast=True)

    def handle_ttin(self) -> None:
        if self.phase is Phase.STOPPING:
            return
        if self.new_master is not None:
            # The new master has our sockets as they were: a slot added
            # here would leave with us.
            log.warning("TTIN ignored: an upgrade is under way; send it to the new master "
                        "once it is ready")
        elif self.config.steer == "cpu" and self.target >= len(self.cpus):
            log.warning("TTIN ignored: --steer cpu runs one worker per CPU (%d)", len(self.cpus))
        else:
            self.target += 1

    def handle_ttou(self) -> None:
        if self.phase is Phase.STOPPING:
            return
        if self.target <= 1:
            log.warning("TTOU ignored: one worker is the fewest")
        elif not self.shared and self._co_held():
            log.warning("TTOU ignored: another master holds these sockets too; "
                        "ask again once it is gone")
        else:
            self.target -= 1

    def handle_usr2(self) -> None:
        if self.new_master is not None:
            log.warning("USR2 ignored: an upgrade is already under way")
        elif self.phase is not Phase.STOPPING:
            self.upgrade_asked = True  # done once no restart is under way

    # -- advancing slots -------------------------------------------------------------

    def _advance(self, now: float) -> None:
        if self.phase is Phase.STARTING and all(
                s.successor is not None and s.successor.state is State.READY for s in self.slots):
            self._all_ready(now)
        if self.phase is Phase.HANDOVER and (self.predecessor_fd is None
                                             or now >= self.handover_deadline):
            if self.predecessor_fd is not None:
                log.warning("the old master is still leaving after %.0f s; reading anyway",
                            HANDOVER_WAIT)
            self.phase = Phase.RUNNING
        if self.phase is Phase.RUNNING:
            self._resize()
        for slot in self.slots + self.drains:
            self._advance_slot(slot, now)
        self._steer()
        if self.phase is not Phase.RUNNING:
            return
        if not self.announced and all(s.worker is not None for s in self.slots):
            self._announce()
        settled = all(s.successor is None and s.worker is not None
                      and s.worker.generation == self.generation for s in self.slots)
        if settled and self.reloading:
            self.reloading = False
            self.events["restarts"] += 1
            log.info("rolling restart complete")
            systemd.notify("READY=1", self._status())
        if settled and self.upgrade_asked:
            self._upgrade()

    def _advance_slot(self, slot: Slot, now: float) -> None:
        old, new = slot.worker, slot.successor
        if new is None:
            stale = (old is not None and old.state is State.SERVING and not slot.draining
                     and old.generation < self.generation)
            if (old is None or stale) and now >= slot.retry_at:
                self._spawn(slot, now)
            return
        if new.state is not State.READY or self.phase is not Phase.RUNNING:
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

    def _spawn(self, slot: Slot, now: float) -> None:
        c = self.config
        recycle_at = (None if c.max_packets is None
                      else c.max_packets + random.randint(0, c.max_packets_jitter))
        config = {"handler": c.handler, "batches": c.batches, "grace": c.grace,
                  "recycle_at": recycle_at,
                  "graceful_timeout": c.graceful_timeout,
                  "reader": dict(c.reader.as_kwargs(), rcvbuf=None),
                  "credentials": self.credentials,
                  "cpu": self._cpu(slot) if c.steer == "cpu" else None,
                  "log_level": logging.getLogger().getEffectiveLevel()}
        try:
            worker = spawn(slot.listener.sock.fileno(), slot.index, self.generation, config,
                           c.start_timeout)
        except OSError as e:
            self._start_failed(slot, f"cannot start a worker: {e.strerror or e}")
            return
        self.workers[worker.pid] = worker
        self.selector.register(worker.status_fd, selectors.EVENT_READ, worker)
        slot.successor = worker
        self.events["worker_starts"] += 1

    def _take_turn(self, slot: Slot) -> None:
        """The slot's successor reads from now on (or drains, if the slot
        left the group)."""
        new = slot.successor
        assert new is not None
        if slot.listener.unbound is not None:
            try:
                if self.config.steer == "cpu":
                    steering.prefer_cpu(slot.listener.sock, self._cpu(slot))
                self.port = slot.listener.bind(self.port)
            except OSError as e:
                self._forget_successor(slot)
                self._start_failed(slot, _text(e))
                return
        if slot.draining:
            new.tell(protocol.DRAIN, State.LEAVING, clock.now() + self._leave_limit())
        else:
            new.tell(protocol.GO, State.SERVING, NEVER)
        slot.worker, slot.successor = new, None
        slot.served, slot.handover_at = True, NEVER
        log.info("worker %d ready on %s", new.pid, slot)

    def _forget_successor(self, slot: Slot) -> None:
        """Stop a successor that has not read anything; it exits unattached."""
        if slot.successor is not None:
            self._dismiss(slot.successor)
            slot.successor = None

    def _dismiss(self, worker: WorkerProcess) -> None:
        """End a worker that never read: one still importing is killed, as
        it cannot hear a command yet."""
        if worker.state is State.STARTING:
            worker.kill()
        worker.tell(protocol.QUIT, State.LEAVING, clock.now() + FAST_STOP)

    def _start_failed(self, slot: Slot, why: str) -> None:
        slot.successor = None
        if self.phase is Phase.STARTING or (not self.announced and self.predecessor is None):
            raise StartError(why)
        if slot.draining:
            self._retry_later(slot, why)
        elif slot.worker is not None:
            if self.reloading:
                log.error("%s; rolling restart aborted, the running workers carry on", why)
                self.reloading = False  # not complete: never reported as a restart
                self.events["restarts_aborted"] += 1
                systemd.notify("READY=1", self._status())
            else:
                log.error("%s; %r carries on", why, slot.worker)
            self._back_off(slot)  # a worker due for replacement (--max-packets) waits
            for other in self.slots:
                if other.worker is not None and other.successor is not None:
                    self._forget_successor(other)
                if other.worker is not None:
                    other.worker.generation = self.generation
        elif not slot.served:
            log.error("%s; the running workers carry on", why)
            self.slots.remove(slot)
            self.target = len(self.slots)
            if not self.shared:
                slot.listener.close(discard=False)
        else:
            self._retry_later(slot, why)
            if not self.shared and self._may_shed(slot.listener) and any(
                    s.worker is not None for s in self.slots):
                # Nobody reads it: take it out of the group so the others
                # get its traffic; a worker drains it once one can start.
                try:
                    listener = self._new_listener()
                    try:
                        self._to_drains(slot)
                    except OSError:
                        listener.close(discard=False)
                        raise
                except OSError as e:  # out of descriptors: it stays, and is retried
                    log.error("cannot take %s off the port: %s; it stays, its queue waiting "
                              "for a worker", slot, _text(e))
                    return
                log.warning("%s leaves the port; its queue waits for a worker to drain it", slot)
                replacement = Slot(slot.index, listener)
                replacement.served, replacement.retry_at = True, slot.retry_at
                replacement.failures, replacement.failed_at = slot.failures, slot.failed_at
                self.slots.append(replacement)

    def _retry_later(self, slot: Slot, why: str) -> None:
        delay = self._back_off(slot)
        log.error("%s; %s has no reader, trying again in %.0f s", why, slot, delay)

    @staticmethod
    def _back_off(slot: Slot) -> float:
        """1 s, 2 s, 4 s ... up to MAX_BACKOFF between a slot's failures (a
        worker that cannot start, or that fails by itself), from 1 s again
        once the slot has gone 2 x MAX_BACKOFF without one."""
        now = clock.now()
        if now - slot.failed_at > 2 * MAX_BACKOFF:
            slot.failures = 0
        slot.failures += 1
        slot.failed_at = now
        delay = min(2.0 ** (slot.failures - 1), MAX_BACKOFF)
        slot.retry_at = now + delay
        return delay

    def _to_drains(self, slot: Slot) -> None:
        """Raises OSError (out of descriptors for the throwaway peer) before
        anything changed."""
        slot.listener.leave_group()
        self.slots.remove(slot)
        slot.draining = True
        self.drains.append(slot)
        if slot.worker is not None and slot.worker.state is State.SERVING:
            slot.worker.tell(protocol.DRAIN, State.LEAVING, clock.now() + self._leave_limit())

    def _resize(self) -> None:
        while len(self.slots) < self.target:
            try:
                listener = self.slots[0].listener if self.shared else self._new_listener()
            except OSError as e:
                log.error("cannot open a socket for a new worker: %s", e.strerror or e)
                self.target = len(self.slots)
                return
            used = {s.index for s in self.slots}
            self.slots.append(Slot(min(set(range(len(used) + 1)) - used), listener))
        while len(self.slots) > self.target:
            slot = max(self.slots, key=lambda s: s.index)
            self._forget_successor(slot)
            if self.shared or slot.listener.unbound is not None:
                self.slots.remove(slot)
                if slot.worker is not None:
                    slot.worker.tell(protocol.RETIRE, State.LEAVING,
                                     clock.now() + self._leave_limit())
                if not self.shared:
                    slot.listener.close(discard=False)
            else:
                try:
                    self._to_drains(slot)
                except OSError as e:
                    log.error("TTOU not done: cannot take %s off the port: %s", slot, _text(e))
                    self.target = len(self.slots)
                    return

    def _cpu(self, slot: Slot) -> int:
        return self.cpus[slot.index % len(self.cpus)]

    def _steer(self) -> None:
        """--steer spread: the group's program deals over every socket in
        it (shed ones included until closed: the kernel passes a datagram
        the program gives a shed socket on to the others)."""
        if self.config.steer != "spread":
            return
        group = [listener for _, listener in self._listeners() if listener.unbound is None]
        if group and len(group) != self.steered_for:
            steering.spread(group[0].sock, len(group))
            self.steered_for = len(group)
            log.info("datagrams dealt at random over %d socket(s)", len(group))

    def _add_missing_slots(self) -> None:
        used = {s.index for s in self.slots}
        for index in range(self.target):
            if index not in used:
                self.slots.append(Slot(index, self._new_listener()))

    def _all_ready(self, now: float) -> None:
        for slot in self.slots:
            slot.served = True  # from here on a failed worker is replaced, not given up
        if self.predecessor_fd is not None:
            assert self.predecessor is not None
            log.info("new workers ready; asking the old master %d to leave", self.predecessor.pid)
            self.predecessor.tell_to_leave()
            self.predecessor_told = True
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
        host, port = self.slots[0].listener.sock.getsockname()[:2]
        self.address = sockets.format_address(host, port)
        log.info("serving %s on %s with %d worker(s)%s", self.config.handler, self.address,
                 len(self.slots), " on one shared socket" if self.shared else "")
        systemd.notify("READY=1", self._status(), f"MAINPID={os.getpid()}")
        self._publish()
        if self.metrics is not None:
            self.metrics.start()
            log.info("metrics on %s", self.metrics.url)

    # -- workers that end --------------------------------------------------------------

    def _reap(self) -> None:
        for worker in list(self.workers.values()):
            code = worker.proc.poll()
            if code is not None:
                self._exited(worker, code)

    def _exited(self, worker: WorkerProcess, code: int) -> None:
        worker.read_status()
        if worker.status_fd in self.selector.get_map():
            self.selector.unregister(worker.status_fd)
        worker.close()
        del self.workers[worker.pid]
        counts = {k: v for k, v in worker.stats.items() if isinstance(v, int)}
        self.totals.update(counts)
        self.past[worker.slot].update(counts)
        slot = next((s for s in self.slots + self.drains
                     if worker in (s.worker, s.successor)), None)
        lost = self._held(worker)
        if slot is not None and slot.successor is worker:
            self.events["exits_failed_start"] += 1
            self._start_failed(slot, "a new worker failed to start: "
                               + (worker.error or exit_reason(code)))
            return
        if slot is not None:
            slot.worker = None
        if not worker.reads:
            self.events["exits_dismissed"] += 1
            log.info("%r stopped before it read anything", worker)
            return
        if code == 0 and worker.state is State.LEAVING:
            self.events["exits_left"] += 1
            log.info("%r left after delivering %s packet(s)", worker,
                     worker.stats.get("delivered", "?"))
            if slot is not None and slot.draining:
                self._drained(slot)
            return
        if worker.state is State.KILLED:
            self.events["exits_killed"] += 1
            log.error("%r was killed%s", worker, lost)
        elif slot is not None and self.phase is not Phase.STOPPING:
            self.events["exits_crashed"] += 1
            why = exit_reason(code) + (f": {worker.error}" if worker.error else "")
            if code > 0:
                # It failed by itself (its reader, the handler's sys.exit):
                # likely again at once, so the replacement backs off.
                delay = self._back_off(slot)
                log.error("%r died (%s)%s; a new worker takes over its socket and queue "
                          "in %.0f s", worker, why, lost, delay)
            else:
                log.error("%r died (%s)%s; a new worker takes over its socket and queue",
                          worker, why, lost)
        else:
            self.events["exits_crashed"] += 1
            log.error("%r failed while leaving (%s)%s", worker, exit_reason(code), lost)

    def _held(self, worker: WorkerProcess) -> str:
        """What a worker that died may have taken from the kernel and not
        handled: at most one receive."""
        if not worker.reads:
            return ""
        unit = "merged receive(s)" if self.config.reader.gro else "datagram(s)"
        return (f"; up to {self.config.reader.batch_size} {unit} it had taken but not "
                "handled may be lost")

    def _drained(self, slot: Slot) -> None:
        self.drains.remove(slot)
        left = slot.listener.close(discard=True)
        if left:
            log.warning("%d datagram(s) still queued on the socket %s left were discarded",
                        left, slot)

    def _check_deadlines(self, now: float) -> None:
        for worker in self.workers.values():
            worker.read_status()  # what came while the master was busy or paused counts
        for worker in list(self.workers.values()):
            if worker.state is State.SERVING:
                self._check_serving(worker, now)
            if now < worker.deadline:
                continue
            if worker.state is State.STARTING:
                worker.error = f"not ready within {self.config.start_timeout:g} s"
                worker.kill()
                worker.deadline = NEVER
            elif worker.state is State.LEAVING:
                log.error("%r did not leave within %g s; its stack follows, then SIGKILL",
                          worker, self._leave_limit())
                worker.dump_and_kill(now)
            elif worker.state is State.KILLED:
                worker.kill()
                worker.deadline = NEVER

    def _check_serving(self, worker: WorkerProcess, now: float) -> None:
        """--timeout: a handler call that does not return, or a worker that
        stopped talking (its link thread starved); --max-packets."""
        timeout = self.config.timeout
        if timeout:
            busy = worker.stats.get("busy_for", 0)
            silent = now - worker.last_heard - protocol.STATS_INTERVAL
            if busy > timeout or silent > timeout:
                log.error("%r: its handler has not returned for %.0f s (--timeout %g); "
                          "its stack follows, then SIGKILL", worker, max(busy, silent), timeout)
                worker.dump_and_kill(now)
                return
        if worker.generation >= 0 and worker.recycle:
            log.info("%r handled %d packets (--max-packets); replacing it", worker,
                     worker.stats.get("delivered", 0))
            worker.generation = -1  # stale: its slot passes to a new worker

    def _leave_limit(self) -> float:
        if self.fast:
            return FAST_STOP
        return self.config.graceful_timeout + KILL_GRACE

    # -- stopping ------------------------------------------------------------------------

    def _begin_stop(self, fast: bool) -> None:
        if self.phase is Phase.STOPPING and (self.fast or not fast):
            return
        self.fast = fast
        first = self.phase is not Phase.STOPPING
        self.phase = Phase.STOPPING
        now = clock.now()
        if first:
            systemd.notify("STOPPING=1")
        log.info("%s stop of %d worker(s)", "fast" if fast else "graceful", len(self.workers))
        for slot in self.slots + self.drains:
            self._forget_successor(slot)
            listener, worker = slot.listener, slot.worker
            if fast or listener.unbound is not None:
                continue
            # Sockets nobody else holds leave the port and are drained; the
            # others stay with their other holders.
            if self._may_shed(listener):
                try:
                    listener.leave_group()
                except OSError as e:  # its workers then finish what they hold
                    log.error("cannot shed the socket of %s: %s", slot, _text(e))
            if worker is not None and worker.state is State.SERVING:
                worker.tell(protocol.DRAIN if listener.shed else protocol.RETIRE,
                            State.LEAVING, now + self._leave_limit())
        for worker in self.workers.values():
            if worker.state in (State.STARTING, State.READY):
                self._dismiss(worker)
            elif fast:
                worker.tell(protocol.QUIT, State.LEAVING, now + FAST_STOP)

    def _finish(self) -> int:
        self._watch_drops()
        t = self.totals
        log.info("stopped: %d received, %d delivered, %d filtered, %d kernel drops",
                 t["received"], t["delivered"], t["too_short"] + t["too_long"],
                 self.kernel_drops)
        return 0

    def _close(self) -> None:
        for worker in self.workers.values():  # left only by an error
            worker.kill()
            worker.close()
        for slot, listener in self._listeners():
            left = listener.close(discard=self._may_shed(listener))
            if left:
                log.warning("%d datagram(s) still queued on the socket of %s were "
                            "discarded at close", left, slot)
        for peer in self.peers:
            peer.close()
        if self.predecessor_fd is not None:
            os.close(self.predecessor_fd)
        self._close_new_master_fd()
        if self.handoff_server is not None:
            self.handoff_server.close()
        if self.pid_file is not None:
            self.pid_file.remove()
            statusfile.remove(statusfile.path_for(self.pid_file.path))
        if self.metrics is not None:
            self.metrics.close()
        self.selector.close()
        if self.new_master is not None:  # an upgrade: the new master counts on from ours
            self.new_master.leave(counters.carried(self))

    # -- others holding our sockets --------------------------------------------------------

    def _co_held(self) -> bool:
        """Another master holds our sockets and goes on serving them: a
        takeover peer, the new master of an upgrade, or the old master
        until it is asked to leave."""
        return (bool(self.peers) or self.new_master is not None
                or (self.predecessor_fd is not None and not self.predecessor_told))

    def _may_shed(self, listener: Listener) -> bool:
        """Ours alone: a socket opened since the others took theirs (TTIN
        while a takeover peer holds the rest) is, and is shed and drained."""
        return not listener.external and not (listener.passed and self._co_held())

    def _handed(self) -> List[Tuple[int, socket.socket, bool]]:
        """The sockets of the port's group, to hand to another master."""
        listeners = [(slot, listener) for slot, listener in self._listeners(drains=False)
                     if listener.unbound is None]
        for _, listener in listeners:
            listener.passed = True
        return [(slot.index, listener.sock, listener.external) for slot, listener in listeners]

    def _upgrade(self) -> None:
        self.upgrade_asked = False
        try:
            self.new_master = upgrade.start_successor(self.config.argv, self._handed(),
                                                      self.target)
            self.new_master_fd = self.new_master.ready_fd
        except OSError as e:
            log.error("cannot start a new master: %s; this master carries on",
                      e.strerror or e)
            return
        self.selector.register(self.new_master_fd, selectors.EVENT_READ, "new master")
        if self.pid_file is not None:
            self.pid_file.set_aside()
        log.info("upgrading: new master %d started", self.new_master.pid)

    def _new_master_spoke(self) -> None:
        """A byte: the new master is ready and this one leaves. End of file
        without one: it is exiting (_check_successor tells why)."""
        assert self.new_master_fd is not None and self.new_master is not None
        try:
            ready = os.read(self.new_master_fd, 1)
        except BlockingIOError:
            return
        self._close_new_master_fd()
        if ready and self.phase is not Phase.STOPPING:
            self.new_master_ready = True
            log.info("the new master %d is ready; this master leaves", self.new_master.pid)
            self._begin_stop(fast=False)

    def _close_new_master_fd(self) -> None:
        if self.new_master_fd is not None:
            self.selector.unregister(self.new_master_fd)
            os.close(self.new_master_fd)
            self.new_master_fd = None

    def _check_successor(self) -> None:
        self.abandoned = [p for p in self.abandoned if p.poll() is None]
        if self.new_master is None or self.new_master.poll() is None:
            return
        self._close_new_master_fd()
        if self.new_master_ready:
            log.warning("the new master %d exited (%s)", self.new_master.pid,
                        exit_reason(self.new_master.returncode))
        else:
            log.error("the new master exited (%s) before it was ready; this master carries on",
                      exit_reason(self.new_master.returncode))
            if self.pid_file is not None:
                self.pid_file.restore()
        self.new_master = None

    def _stop_service(self, sig: int, fast: bool) -> None:
        """TERM, INT or QUIT. During an upgrade it is the service's stop:
        the new master gets the same signal. One not yet ready never read,
        so this master is the only one serving again and drains as usual."""
        if self.new_master is not None:
            log.info("a stop during an upgrade: passing %s to the new master %d",
                     signal.Signals(sig).name, self.new_master.pid)
            try:
                # INT as TERM: from a terminal the new master may get the
                # INT itself too, and two INTs would make its stop fast.
                self.new_master.send_signal(signal.SIGTERM if sig == signal.SIGINT else sig)
            except ProcessLookupError:
                pass
            if not self.new_master_ready:
                self._close_new_master_fd()
                self.abandoned.append(self.new_master)
                self.new_master = None
                if self.pid_file is not None:
                    self.pid_file.restore()
        self._begin_stop(fast)

    def _predecessor_gone(self) -> None:
        assert self.predecessor_fd is not None and self.predecessor is not None
        carried = self.predecessor.read(self.predecessor_fd)
        if carried is None:
            return  # it is still leaving
        counters.carry_over(self, carried)
        self.selector.unregister(self.predecessor_fd)
        os.close(self.predecessor_fd)
        self.predecessor_fd = None
        log.info("the old master has left")

    def _offer(self) -> None:
        assert self.handoff_server is not None
        try:
            conn = upgrade.offer(self.handoff_server, self._handed())
        except OSError as e:
            log.warning("handoff to another master failed: %s", e)
            return
        if conn is not None:
            self._add_peer(conn)
            log.info("sockets shared with another master; they are no longer shed")

    def _add_peer(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        self.peers.append(conn)
        self.selector.register(conn, selectors.EVENT_READ, conn)

    def _peer_spoke(self, conn: socket.socket) -> None:
        try:
            if conn.recv(1):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        self.selector.unregister(conn)
        self.peers.remove(conn)
        conn.close()
        log.info("the other master holding our sockets is gone; they are ours alone again")

    # -- telling the operator ----------------------------------------------------------------

    def _listeners(self, drains: bool = True) -> Iterator[Tuple[Slot, Listener]]:
        """Each socket we hold once, with the first slot that reads it."""
        seen = set()
        for slot in self.slots + (self.drains if drains else []):
            if id(slot.listener) not in seen:
                seen.add(id(slot.listener))
                yield slot, slot.listener

    def _watch_drops(self) -> None:
        for slot, listener in self._listeners():
            new = listener.new_drops()
            if new:
                self.kernel_drops += new
                where = "the shared socket" if self.shared else f"the socket of {slot}"
                reader = f" (worker {slot.worker.pid})" if slot.worker else " (no reader)"
                unit = ("receive buffer(s) (with GRO, one holds up to 64 datagrams)"
                        if self.config.reader.gro else "datagram(s)")
                log.warning("the kernel dropped %d %s on %s%s: its receive queue was full",
                            new, unit, where, "" if self.shared else reader)

    def snapshot(self) -> dict:
        """What the master knows, for `udp-reader status` and metrics: each
        slot's socket and workers, and counters that only grow."""
        slots = []
        for slot in self.slots + self.drains:
            info = sockets.meminfo(slot.listener.sock) if slot.listener.unbound is None else ()
            workers = [w for w in (slot.worker, slot.successor) if w is not None]
            live = collections.Counter(self.past[slot.index])
            for w in self.workers.values():
                if w.slot == slot.index:
                    live.update({k: v for k, v in w.stats.items() if isinstance(v, int)})
            slots.append({
                "slot": slot.index,
                "state": ("draining" if slot.draining else "no reader" if slot.worker is None
                          else slot.worker.state.value),
                "queued_bytes": info[0] if info else 0,
                "kernel_drops": slot.listener.drops_seen,
                "workers": [{"pid": w.pid, "state": w.state.value, "started": w.started,
                             "stats": w.stats} for w in workers],
                "totals": dict(live),
            })
        others = {"old_master": self.predecessor.pid if self.predecessor is not None
                  and self.predecessor_fd is not None else None,
                  "new_master": self.new_master.pid if self.new_master is not None else None,
                  "takeover_peers": len(self.peers) or None}
        return {"pid": os.getpid(), "address": self.address, "time": time.time(),
                "phase": self.phase.value, "workers": self.target, "slots": slots,
                "events": dict(self.events), "kernel_drops": self.kernel_drops,
                "shared": self.shared,
                # Where --metrics serves: the port it bound when given 0.
                "metrics": self.metrics.url if self.metrics is not None else None,
                # Other masters holding these sockets (an upgrade, a takeover).
                "others": {k: v for k, v in others.items() if v is not None}}

    def _publish(self) -> None:
        if not self.announced or (self.pid_file is None and self.metrics is None):
            return
        self.latest = self.snapshot()  # a new dict each time, never changed once published
        if self.pid_file is not None:
            try:
                statusfile.write(statusfile.path_for(self.pid_file.path), self.latest)
            except OSError as e:
                log.warning("cannot write the status file: %s", _text(e))

    def _status(self) -> str:
        # A slot whose worker hands over to its successor still has a reader.
        serving = sum(1 for s in self.slots if s.worker is not None)
        return f"STATUS={serving} workers on {self.address}"

    def _tell_status(self) -> None:
        status = self._status()
        if status != self.status and self.announced:
            self.status = status
            systemd.notify(status)



def _text(error: OSError) -> str:
    """An OSError as one line, without "[Errno N]"."""
    if error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    return error.strerror or str(error)
