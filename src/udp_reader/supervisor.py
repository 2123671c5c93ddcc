"""The `udp-reader serve` master: supervises worker processes that share one
UDP port, and restarts, resizes, upgrades or stops them without losing a
datagram.

The master binds the sockets and keeps a copy of each, so a worker that dies
leaves its queue intact for its replacement. Each worker reads its own
SO_REUSEPORT socket (a new worker gets a new one, and the old worker sheds
and drains its own), or, with --shared or systemd activation, all read one
socket (an old worker just stops reading). Signals, as operators know them
from gunicorn and nginx:

    HUP         rolling restart: each new worker (importing the handler anew)
                is ready before an old one leaves
    TERM        graceful stop: every worker drains, then exit 0
    INT, QUIT   fast stop
    TTIN, TTOU  one worker more, one fewer (the one removed drains)
    USR2        upgrade the master: a new master and its workers join the
                port, then this master drains its workers and exits
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from typing import Deque, Dict, List, Optional, Sequence

from udp_reader import handoff, sockets, systemd
from udp_reader.worker import CONFIG_ENV, EXIT_START_FAILED

log = logging.getLogger("udp_reader")

UPGRADE_ENV = "UDP_READER_UPGRADE_FROM"
WAKEUP, HANDOFF = object(), object()  # selector keys that are not workers
HANDLED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT,
           signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR2, signal.SIGCHLD)


class StartError(Exception):
    """The server cannot start: one line for the operator."""


class WorkerStartFailed(Exception):
    """A new worker exited or hung before it was ready."""


@dataclasses.dataclass
class Config:
    handler: str
    bind: Optional[str]
    argv: Sequence[str]            # the command line, for an upgrade (USR2)
    workers: int = 1
    shared: bool = False
    batches: bool = False
    min_size: int = 0
    max_size: int = 65507
    batch_size: int = 64
    rcvbuf: Optional[int] = None
    gro: bool = True
    grace: float = 0.05
    graceful_timeout: float = 30.0
    start_timeout: float = 30.0
    pid_file: Optional[str] = None
    handoff_dir: Optional[str] = None   # offer the sockets to a successor here
    takeover_dir: Optional[str] = None  # take the sockets of a running master


class Slot:
    """A socket the master keeps open for its workers. A new one is bound,
    and so joins the port's SO_REUSEPORT group, only once its first worker
    is ready: a worker that fails to start leaves no socket taking traffic
    that nobody reads."""

    def __init__(self, sock: socket.socket, sockaddr: Optional[tuple] = None) -> None:
        self.sock = sock
        self.unbound = sockaddr  # where to bind it, until it is bound
        self.workers: set = set()

    def drops(self) -> int:
        return sockets.kernel_drops(self.sock)


class WorkerProcess:
    def __init__(self, proc: subprocess.Popen, slot: Slot, status: int) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.slot = slot
        self.status = status        # read end of the worker's status pipe
        self.pending = b""
        self.ready = False
        self.leaving = False
        self.stats: Optional[dict] = None
        self.error = ""


class Arbiter:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.shared = config.shared
        self.slots: List[Slot] = []
        self.workers: Dict[int, WorkerProcess] = {}
        self.signals: Deque[int] = collections.deque()
        self.selector = selectors.DefaultSelector()
        self.stopping = False
        self.successor: Optional[subprocess.Popen] = None
        self.handed_off = False     # a successor reads our very sockets
        self.totals: collections.Counter = collections.Counter()
        self.loss_watch: List[tuple] = []  # (slot, its drops when its worker died)
        self.address = ""
        self.bound_to: tuple = ()
        self.handoff: Optional[handoff.HandoffServer] = None

    # -- start and stop --------------------------------------------------------

    def run(self) -> int:
        self._write_pid_file(self.config.pid_file)
        try:
            self._open_slots()
            self._install_signals()
            for _ in range(self.config.workers):
                try:
                    self._start_worker(self._slot_for_new_worker())
                except WorkerStartFailed as e:
                    raise StartError(str(e)) from None
            log.info("serving %s on %s with %d worker(s)%s", self.config.handler,
                     self.address, len(self.workers), " on one shared socket" if self.shared else "")
            self._announce_ready()
            return self._loop()
        finally:
            self._close()

    def _write_pid_file(self, path: Optional[str]) -> None:
        if not path:
            return
        try:
            with open(path + ".tmp", "w") as f:
                f.write(f"{os.getpid()}\n")
            os.replace(path + ".tmp", path)
        except OSError as e:
            raise StartError(f"cannot write pid file {path}: {e.strerror}") from None

    def _open_slots(self) -> None:
        inherited = handoff.import_inherited() or systemd.listen_fds()
        if not inherited and self.config.takeover_dir:
            inherited = handoff.fetch_sockets(handoff.private_path(self.config.takeover_dir))
        if inherited:
            for name, sock in inherited:
                sockets.check_udp(sock)
                if self.config.rcvbuf:
                    sockets.set_rcvbuf(sock, self.config.rcvbuf)
                self.slots.append(Slot(sock))
            self.shared = True
            host, port = self.slots[0].sock.getsockname()[:2]
        else:
            if not self.config.bind:
                raise StartError("no address: give --bind or start under socket activation")
            first = Slot(sockets.open_socket(self.config.bind, reuseport=True,
                                             rcvbuf=self.config.rcvbuf))
            self.slots.append(first)
            host, port = first.sock.getsockname()[:2]
        self.bound_to = (host, port)  # the port chosen, when --bind asked for 0
        self.address = sockets.format_address(host, port)
        if self.config.handoff_dir:
            if not self.shared:
                raise StartError("--handoff needs --shared: one socket the successor "
                                 "reads with us, and then alone")
            self.handoff = handoff.HandoffServer(handoff.private_path(self.config.handoff_dir))

    def _slot_for_new_worker(self) -> Slot:
        """The shared socket, or a socket of its own: one no worker reads
        (the first the master bound, or one left by a failed start), or a
        new one for the port, bound once the worker is ready."""
        if self.shared:
            return self.slots[0]
        idle = [s for s in self.slots if not s.workers and not handoff.is_shed(s.sock)]
        if idle:
            return idle[0]
        slot = Slot(*sockets.unbound_socket(self.bound_to, reuseport=True,
                                            rcvbuf=self.config.rcvbuf))
        self.slots.append(slot)
        return slot

    def _announce_ready(self) -> None:
        systemd.notify("READY=1", self._status(), f"MAINPID={os.getpid()}")
        predecessor = os.environ.pop(UPGRADE_ENV, "")
        if predecessor.isdigit() and int(predecessor) == os.getppid():
            log.info("upgrade complete; asking the old master %s to leave", predecessor)
            os.kill(int(predecessor), signal.SIGTERM)

    def _status(self) -> str:
        return f"STATUS={len(self._serving())} workers on {self.address}"

    def _close(self) -> None:
        for worker in list(self.workers.values()):
            self._discard(worker)
        for slot in self.slots:
            slot.sock.close()
        self.slots.clear()
        self.selector.close()
        if self.handoff is not None:
            self.handoff.close()
        self._remove_pid_file()

    def _remove_pid_file(self) -> None:
        path = self.config.pid_file
        if not path:
            return
        for candidate in (path, path + ".oldbin"):
            try:
                with open(candidate) as f:
                    if f.read().strip() == str(os.getpid()):
                        os.unlink(candidate)
            except OSError:
                pass

    # -- signals and the main loop -------------------------------------------------

    def _install_signals(self) -> None:
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup = read_end
        self.selector.register(read_end, selectors.EVENT_READ, WAKEUP)
        if self.handoff is not None:
            self.selector.register(self.handoff.fileno(), selectors.EVENT_READ, HANDOFF)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        for sig in HANDLED:
            signal.signal(sig, lambda signum, _frame: self.signals.append(signum))

    def _loop(self) -> int:
        while True:
            self._poll(0.1 if self.loss_watch else 1.0)
            self._reap()
            self._report_losses()
            while self.signals:
                sig = self.signals.popleft()
                if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                    return self._stop(graceful=sig == signal.SIGTERM)
                if sig == signal.SIGHUP:
                    self._rolling_restart()
                elif sig == signal.SIGTTIN:
                    self._try_start_worker()
                    systemd.notify(self._status())
                elif sig == signal.SIGTTOU:
                    self._remove_one()
                    systemd.notify(self._status())
                elif sig == signal.SIGUSR2:
                    self._upgrade()
            self._check_successor()

    def _poll(self, timeout: float) -> None:
        """Wait for a signal or worker status, and read what came."""
        for key, _ in self.selector.select(timeout):
            if key.data is WAKEUP:
                try:
                    while os.read(self._wakeup, 512):
                        pass
                except BlockingIOError:
                    pass
            elif key.data is HANDOFF:
                self._hand_over()
            else:
                self._read_status(key.data)

    def _hand_over(self) -> None:
        """A successor asks for our sockets (--takeover): share them. From
        then on, workers that leave leave the queue to it."""
        assert self.handoff is not None
        try:
            sent = self.handoff.serve_one([(f"udp{i}", s.sock) for i, s in enumerate(self.slots)],
                                          timeout=1.0)
        except OSError as e:
            log.warning("handoff to a successor failed: %s", e)
            return
        if sent:
            self.handed_off = True
            log.info("sockets shared with a successor; TERM now leaves the queue to it")

    def _read_status(self, worker: WorkerProcess) -> None:
        try:
            chunk = os.read(worker.status, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self._unwatch(worker)
            return
        lines = (worker.pending + chunk).split(b"\n")
        worker.pending = lines.pop()
        for line in lines:
            message = json.loads(line)
            if message.get("ready"):
                worker.ready = True
            if "stats" in message:
                worker.stats = message["stats"]
            if "error" in message:
                worker.error = message["error"]

    # -- workers ------------------------------------------------------------------

    def _spawn(self, slot: Slot) -> WorkerProcess:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        c = self.config
        config = {
            "handler": c.handler, "batches": c.batches, "fd": slot.sock.fileno(),
            "status_fd": write_end, "min_size": c.min_size, "max_size": c.max_size,
            "batch_size": c.batch_size, "gro": c.gro, "grace": c.grace,
            "graceful_timeout": c.graceful_timeout,
            "log_level": logging.getLogger().getEffectiveLevel(),
        }
        env = dict(os.environ, **{CONFIG_ENV: json.dumps(config)})
        try:
            proc = subprocess.Popen([sys.executable, "-m", "udp_reader.worker"], env=env,
                                    pass_fds=(slot.sock.fileno(), write_end))
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        os.set_blocking(read_end, False)
        worker = WorkerProcess(proc, slot, read_end)
        slot.workers.add(worker.pid)
        self.workers[worker.pid] = worker
        self.selector.register(read_end, selectors.EVENT_READ, worker)
        return worker

    def _start_worker(self, slot: Slot) -> WorkerProcess:
        """Spawn a worker and wait until it is ready. One that exits or hangs
        before that is discarded and WorkerStartFailed raised; whoever is
        already serving carries on."""
        worker = self._spawn(slot)
        deadline = time.monotonic() + self.config.start_timeout
        while not worker.ready:
            code = worker.proc.poll()
            if code is not None or time.monotonic() >= deadline:
                self._discard(worker)
                why = worker.error or ("not ready within %.0f s" % self.config.start_timeout
                                       if code is None else _exit_reason(code))
                raise WorkerStartFailed(f"a new worker failed to start: {why}")
            self._poll(0.05)
        if slot.unbound is not None:
            try:
                sockets.bind(slot.sock, slot.unbound)
            except OSError as e:
                self._discard(worker)
                raise WorkerStartFailed(f"a new worker's socket: {e.strerror}") from None
            slot.unbound = None
        log.info("worker %d ready", worker.pid)
        return worker

    def _try_start_worker(self, slot: Optional[Slot] = None) -> bool:
        """Start a worker on `slot` (by default a new one); on failure say
        why and carry on with the workers that run."""
        try:
            self._start_worker(slot or self._slot_for_new_worker())
        except WorkerStartFailed as e:
            log.error("%s; the running workers carry on", e)
            return False
        except OSError as e:  # descriptors or processes ran out, for one
            log.error("cannot start a worker: %s; the running workers carry on",
                      e.strerror or e)
            return False
        return True

    def _leave(self, worker: WorkerProcess) -> None:
        """Ask a worker to go without loss. A socket that others go on reading
        (shared with the remaining workers, or handed to a successor) is left
        to them once the worker has delivered what it took (USR1); otherwise
        the worker sheds the socket and drains it (TERM)."""
        if worker.leaving:
            return
        worker.leaving = True
        others_go_on = self.handed_off or (self.shared and not self.stopping)
        worker.proc.send_signal(signal.SIGUSR1 if others_go_on else signal.SIGTERM)

    def _serving(self) -> List[WorkerProcess]:
        return [w for w in self.workers.values() if not w.leaving]

    def _rolling_restart(self) -> None:
        systemd.notify_reloading()
        log.info("rolling restart of %d worker(s)", len(self._serving()))
        for old in self._serving():
            if not self._try_start_worker():
                log.error("rolling restart aborted")
                break
            self._leave(old)
        systemd.notify("READY=1", self._status())

    def _remove_one(self) -> None:
        serving = self._serving()
        if len(serving) <= 1:
            log.warning("TTOU ignored: one worker is the fewest")
            return
        self._leave(max(serving, key=lambda w: w.pid))

    def _reap(self) -> None:
        for worker in list(self.workers.values()):
            code = worker.proc.poll()
            if code is None:
                continue
            self._read_status(worker)
            self._forget(worker)
            if worker.leaving or self.stopping:
                if code == 0:
                    log.info("worker %d left after delivering %s packet(s)", worker.pid,
                             (worker.stats or {}).get("delivered", "?"))
                else:
                    log.error("worker %d failed while leaving (%s)", worker.pid,
                              _exit_reason(code))
                continue
            # An unexpected death: the master's copy kept the socket and its
            # queue; a replacement takes over the same socket. What the
            # kernel drops meanwhile is reported once the queue is no
            # longer full (see _report_losses).
            self.loss_watch.append((worker.slot, worker.slot.drops()))
            log.error("worker %d died (%s); replacing it", worker.pid, _exit_reason(code))
            self._try_start_worker(worker.slot)
            systemd.notify(self._status())

    def _report_losses(self, final: bool = False) -> None:
        """Log the kernel's drops on the sockets of dead workers, from the
        death until a replacement has emptied the queue below half."""
        for entry in list(self.loss_watch):
            slot, before = entry
            if not final and (not slot.workers or sockets.queue_filling(slot.sock)):
                continue
            log.warning("the kernel dropped %d datagram(s) on the socket of a dead worker "
                        "while it had no reader", slot.drops() - before)
            self.loss_watch.remove(entry)

    def _discard(self, worker: WorkerProcess) -> None:
        """End a worker now, if it still runs, keep what it last reported,
        and forget it."""
        if worker.proc.poll() is None:
            worker.proc.kill()
        worker.proc.wait()
        self._read_status(worker)
        self._forget(worker)

    def _unwatch(self, worker: WorkerProcess) -> None:
        if worker.status in self.selector.get_map():
            self.selector.unregister(worker.status)

    def _forget(self, worker: WorkerProcess) -> None:
        if worker.stats:
            self.totals.update({k: v for k, v in worker.stats.items() if isinstance(v, int)})
        self.workers.pop(worker.pid, None)
        worker.slot.workers.discard(worker.pid)
        self._unwatch(worker)
        os.close(worker.status)
        if not self.shared and not worker.slot.workers and handoff.is_shed(worker.slot.sock):
            # A drained socket is done with.
            worker.slot.sock.close()
            self.slots.remove(worker.slot)

    def _stop(self, graceful: bool) -> int:
        self.stopping = True
        systemd.notify("STOPPING=1")
        log.info("%s stop of %d worker(s)", "graceful" if graceful else "fast", len(self.workers))
        for worker in list(self.workers.values()):
            if graceful:
                self._leave(worker)
            else:
                worker.proc.send_signal(signal.SIGQUIT)
        limit = self.config.graceful_timeout if graceful else 5.0
        deadline = time.monotonic() + limit
        while self.workers and time.monotonic() < deadline:
            self._poll(0.05)
            self._reap()
        for worker in list(self.workers.values()):
            log.error("worker %d did not leave within %.0f s; killing it", worker.pid, limit)
            self._discard(worker)
        self._report_losses(final=True)
        t = self.totals
        log.info("stopped: %d received, %d delivered, %d filtered, %d kernel drops",
                 t["received"], t["delivered"], t["too_short"] + t["too_long"],
                 t["kernel_drops"])
        return 0

    # -- upgrading the master itself ------------------------------------------------

    def _upgrade(self) -> None:
        if self.successor is not None:
            log.warning("USR2 ignored: an upgrade is already under way")
            return
        env = dict(os.environ, **{UPGRADE_ENV: str(os.getpid())})
        keep: List[int] = []
        if self.shared:
            # Hand the very socket over: one queue, nothing to drain.
            keep = handoff.export_for_exec([("shared", self.slots[0].sock)], env)
        if self.config.pid_file and os.path.exists(self.config.pid_file):
            os.replace(self.config.pid_file, self.config.pid_file + ".oldbin")
        log.info("upgrading: starting a new master")
        self.successor = subprocess.Popen([sys.executable, "-m", "udp_reader", *self.config.argv],
                                          env=env, pass_fds=keep)
        for fd in keep:
            os.set_inheritable(fd, False)
        self.handed_off = self.shared

    def _check_successor(self) -> None:
        if self.successor is None or self.successor.poll() is None:
            return
        log.error("the new master exited (%s) before it was ready; this master carries on",
                  _exit_reason(self.successor.returncode))
        self.successor = None
        self.handed_off = False
        pid_file = self.config.pid_file
        if pid_file and os.path.exists(pid_file + ".oldbin"):
            os.replace(pid_file + ".oldbin", pid_file)


def _exit_reason(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    if code == EXIT_START_FAILED:
        return "its handler or socket could not be set up"
    return f"exit code {code}"
