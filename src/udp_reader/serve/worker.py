"""A worker process of `udp-reader serve`: the user's handler on one socket.

Started by the master (isolated, bootstrap.py) with the socket,
a status pipe and its orders (orders.py). It sets everything up,
says it is ready, and reads only once the master says `go`: a slot's socket
passes from the old worker to the new one like a baton, so nobody reads it
twice and the queue bridges the moment between.

A worker never sheds a socket: the master alone knows who else holds it.
The handler's module may define worker_start(), called once before the
worker says it is ready, and worker_stop(), called after its last packet,
whichever way it leaves (restart, stop, removal, its master gone): the
place to open and to flush a sink. A handler that keeps state hands it
to the next worker with save_state() and restore_state() (keeper.py).
With --forward there is no handler: the worker publishes each batch to a
JetStream subject (forward/publisher.py) and, whichever way it leaves,
waits for every acknowledgement before it reports released.
TERM and INT are left to the master (Ctrl-C reaches the whole process
group); QUIT makes the worker exit now; USR2 prints every thread's stack
(faulthandler), which the master asks for before it kills a stuck worker.
"""

from __future__ import annotations

import faulthandler
import importlib
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from types import ModuleType
from typing import Any, Callable, Optional, Set, Tuple

from udp_reader import Reader, ReceiveError, answering, sockets
from udp_reader.serve import bootstrap, logs, privileges, protocol
from udp_reader.serve.keeper import Keeper
from udp_reader.serve.orders import WorkerOrders
from udp_reader.serve.signals import EXACT_TTIN, EXACT_TTOU

log = logging.getLogger("udp_reader")


class HandlerError(Exception):
    """The handler named on the command line cannot be loaded."""


def load_handler(spec: str) -> Tuple[Callable[..., Any], ModuleType,
                                     Optional[Callable[[], Any]], Optional[Callable[[], Any]]]:
    """Import "package.module:attribute"; return the callable, its module
    (where the state hooks are looked for: keeper.py) and the module's
    optional lifecycle hooks, worker_start() and worker_stop()."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise HandlerError(f"handler {spec!r} must look like MODULE:CALLABLE")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as e:
        raise HandlerError(f"cannot import handler module {module_name!r}: "
                           f"{type(e).__name__}: {e}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerError(f"module {module_name!r} has no {attribute!r}") from None
    if not callable(target):
        raise HandlerError(f"handler {spec!r} is not callable")
    module = sys.modules[module_name]
    hooks = [getattr(module, name, None) for name in ("worker_start", "worker_stop")]
    start, stop = (hook if callable(hook) else None for hook in hooks)
    return target, module, start, stop


def _hook(hook: Callable[[], Any]) -> None:
    try:
        hook()
    except Exception as e:
        raise HandlerError(f"{hook.__name__}() raised {type(e).__name__}: {e}") from None


class RateLimitedLog:
    """Logs a handler's exceptions at most once per `interval` seconds,
    saying how many were left out; flush() tells the tail at exit. The
    first of each distinct error (its type and where it was raised) is
    always logged, with its traceback: the one an operator needs to fix
    it, without -v and without a flood."""

    KINDS = 1000  # distinct errors remembered; past that only -v shows tracebacks

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.count = 0
        self.suppressed = 0
        self._last = -interval
        self._seen: Set[Tuple[str, str, int]] = set()

    def error(self, exc: BaseException) -> None:
        self.count += 1
        now = time.monotonic()
        new = self._new_kind(exc)
        if not new and now - self._last < self.interval:
            self.suppressed += 1
            return
        log.error("handler raised %s: %s%s", type(exc).__name__, exc, self._more(),
                  exc_info=new or log.isEnabledFor(logging.DEBUG))
        self.suppressed = 0
        self._last = now

    def _new_kind(self, exc: BaseException) -> bool:
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        kind = (f"{type(exc).__module__}.{type(exc).__qualname__}",
                tb.tb_frame.f_code.co_filename if tb else "", tb.tb_lineno if tb else 0)
        if kind in self._seen or len(self._seen) >= self.KINDS:
            return False
        self._seen.add(kind)
        return True

    def flush(self) -> None:
        if self.suppressed:
            log.error("handler raised %d more exception(s) since the last report",
                      self.suppressed)
            self.suppressed = 0

    def _more(self) -> str:
        return f" ({self.suppressed} more since the last report)" if self.suppressed else ""


class Worker:
    def __init__(self, orders: WorkerOrders) -> None:
        self.orders = orders
        self._status = os.fdopen(orders.status_fd, "wb", buffering=0)
        self._status_lock = threading.Lock()
        self.command: Optional[str] = None  # the master's last word that ends reading
        self._commanded = threading.Event()
        self._leaving = threading.Event()   # a command other than go came
        self._recycled = False  # --max-packets reached: waiting for the incoming worker
        self.errors = RateLimitedLog()
        self.reader: Optional[Reader] = None
        self._busy_since: Optional[float] = None
        self._last_delivered = -1
        self.keeper: Optional[Keeper] = None  # the handler's state, if it keeps one
        self.forwarder: Any = None  # --forward: the Publisher in place of a handler

    def report(self, **message: Any) -> None:
        with self._status_lock:
            try:
                self._status.write(protocol.encode(**message))
            except OSError:
                pass  # the master is gone; nothing to tell

    def _busy_for(self) -> float:
        """How long the handler's current call has lasted, to a second: the
        main thread is in a frame below _serve (not waiting in the reader)
        and no packet was handed over since the last look."""
        assert self.reader is not None
        frame = sys._current_frames().get(threading.main_thread().ident or 0)
        delivered = self.reader.stats.delivered
        waiting = (frame is None or frame.f_code is Worker._serve.__code__
                   or self._recycled)
        if waiting or delivered != self._last_delivered or self.command != protocol.GO:
            self._busy_since = None
        elif self._busy_since is None:
            self._busy_since = time.monotonic()
        self._last_delivered = delivered
        return 0.0 if self._busy_since is None else time.monotonic() - self._busy_since

    def stats(self) -> dict:
        assert self.reader is not None
        stats = dict(self.reader.stats._asdict(), handler_errors=self.errors.count)
        if self.forwarder is not None:  # counted like the reader's, per slot
            stats.update({f"forward_{name}": n for name, n in self.forwarder.stats.counts()})
        return stats

    def obey(self, command: str) -> None:
        """Take a command: the first one wakes main(); a later one may only
        make leaving faster, never turn a drain into something else."""
        if command not in protocol.COMMANDS:
            return
        previous = self.command
        if previous not in (None, protocol.GO) and command != protocol.QUIT:
            return
        self.command = command
        self._commanded.set()
        if command != protocol.GO:
            self._leaving.set()
        if previous is not None and self.reader is not None:
            self.reader.stop()  # ends the run (or the leaving) under way

    def _link(self) -> None:
        """Commands from the master on stdin; counters to it every second."""
        commands = protocol.Lines()
        while True:
            readable, _, _ = select.select([0], [], [], protocol.STATS_INTERVAL)
            if not readable:
                self.report(stats=dict(self.stats(), busy_for=self._busy_for()))
                continue
            chunk = os.read(0, 4096)
            if not chunk:
                log.warning("master gone; finishing the receive in hand and leaving")
                self.obey(protocol.RETIRE)
                return
            for line in commands.feed(chunk):
                self.obey(line.decode(errors="replace").strip())

    def main(self) -> int:
        orders = self.orders
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        for exact in (EXACT_TTIN, EXACT_TTOU):  # the master's, sent to the group
            signal.signal(exact, signal.SIG_IGN)
        signal.signal(signal.SIGQUIT, lambda *_: self.obey(protocol.QUIT))
        faulthandler.register(signal.SIGUSR2, all_threads=True)
        if orders.batches:
            # Batch columns are numpy arrays: import it before saying ready,
            # not on the first batch.
            import numpy  # noqa: F401
        if orders.cpu is not None:  # --steer cpu: its socket prefers this CPU's datagrams
            os.sched_setaffinity(0, {orders.cpu})
        if orders.credentials:
            privileges.drop(privileges.Credentials(*orders.credentials))
        sys.path[:0] = bootstrap.handler_path()  # only now: it may be the worker account's
        try:
            if orders.forward is not None:
                handler, start, stop = self._forward(orders.forward), None, None
            else:
                handler, module, start, stop = load_handler(orders.handler or "")
                if not orders.batches:
                    handler = answering(handler)  # what it returns answers the packet
                self.keeper = Keeper.for_module(module, orders.state_dir, _slot(),
                                                orders.checkpoint)
            if start is not None:
                _hook(start)
            self.reader = Reader(fileno=orders.fd, **orders.reader)
        except (HandlerError, ValueError, OSError) as e:
            self.report(error=str(e))  # the master tells the operator
            return protocol.EXIT_START_FAILED
        threading.Thread(target=self._link, name="master-link", daemon=True).start()
        self.report(ready=True)
        self._commanded.wait()
        keeper = self.keeper if self.command in (protocol.GO, protocol.DRAIN) else None
        if keeper is not None:
            # A slot that left the group (drain) is not claimed: nobody follows it.
            keeper.take(claim=self.command == protocol.GO)
        try:
            if self.command == protocol.GO:
                if keeper is not None:
                    keeper.start_ticking(self.reader.stop)
                self._serve(handler)
            if keeper is not None:
                keeper.stop_ticking()
            self._leave(handler)
        except ReceiveError as e:
            # Not the handler's: a new worker takes over the socket, after
            # the master's back-off, rather than this one spinning.
            log.error("the reader failed: %s; leaving", e)
            self.report(error=str(e), stats=self.stats())
            return protocol.EXIT_READER_FAILED
        self.errors.flush()
        if self.forwarder is not None and self.command != protocol.QUIT:
            self.forwarder.close()  # what it took is in the stream before it lets go
        if keeper is not None and self.command == protocol.RETIRE:
            keeper.hand_over()  # before released: the next worker reads it at its turn
        self.report(released=True)
        if stop is not None:  # after the last packet: the handler flushes its sink
            try:
                _hook(stop)
            except HandlerError as e:
                log.error("%s", e)
        if keeper is not None and self.command == protocol.DRAIN:
            keeper.after_stop()
        self.report(stats=self.stats())
        return 0

    def _forward(self, url: str) -> Callable[[Any], None]:
        """The built-in handler of --forward: each batch one message."""
        from udp_reader.forward import Publisher, TargetError

        try:
            self.forwarder = forwarder = Publisher(url, tag=f"slot{_slot()}")
        except TargetError as e:  # no stream, a refused connection: told as the handler's
            raise HandlerError(str(e)) from None
        with socket.socket(fileno=os.dup(self.orders.fd)) as sock:
            port = sock.getsockname()[1]
        return lambda batch: forwarder.forward(batch, port)

    def _serve(self, handler: Callable[..., Any]) -> None:
        assert self.reader is not None
        run = self.reader.run_batches if self.orders.batches else self.reader.run
        recycle_at = self.orders.recycle_at  # --max-packets
        while self.command == protocol.GO:
            left = None if recycle_at is None else recycle_at - self.reader.stats.delivered
            if left is not None and left <= 0:
                # Read no more: the queue holds what comes until the master's
                # new worker is ready and this one is told to retire.
                self._recycled = True
                self.report(recycle=True, stats=self.stats())
                self._leaving.wait()
                return
            try:
                run(handler, count=left)
            except ReceiveError:
                raise
            except Exception as e:  # the handler's: log it and carry on
                self.errors.error(e)
            if self.keeper is not None:
                self.keeper.tick()  # between handler calls, never beside one

    def _leave(self, handler: Callable[..., Any]) -> None:
        """Deliver what the reader took (retire), or what the shed socket
        holds (drain), then close."""
        reader = self.reader
        assert reader is not None
        if self.command == protocol.QUIT:
            reader.close()
            return
        # The master sheds before it says drain; never shed here.
        until_idle = self.command == protocol.DRAIN and sockets.is_shed(reader.socket)

        def guarded(item: Any) -> None:
            try:
                handler(item)
            except Exception as e:
                self.errors.error(e)

        target = "on_batch" if self.orders.batches else "on_packet"
        reader.drain(shed=until_idle, grace=self.orders.grace,
                     timeout=self.orders.graceful_timeout, **{target: guarded})


def _slot() -> int:
    return int(os.environ.get(protocol.SLOT_ENV, "-1"))


def main() -> int:
    orders = WorkerOrders.from_json(os.environ.pop(protocol.CONFIG_ENV))
    logs.configure(orders.log_level, f"udp-reader[worker {os.getpid()} slot "
                                     f"{os.environ.get(protocol.SLOT_ENV, '?')}]")
    return Worker(orders).main()


if __name__ == "__main__":
    sys.exit(main())
