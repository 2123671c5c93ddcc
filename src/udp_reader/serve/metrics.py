"""`udp-reader serve --metrics HOST:PORT`: the master's snapshot in the
Prometheus text format, over HTTP from a thread of the master.

The scrape never touches the master's live state: the loop publishes a
fresh snapshot every second (Arbiter.latest, snapshot.py, never changed
once published) and the collector turns whichever is current into metric
families. prometheus_client is an optional extra (udp-reader[metrics]),
imported only when --metrics is given.

The listening socket is bound when the master sets up, before any worker
starts, so a port in use or a missing prometheus_client is a set-up error.
It is a SO_REUSEPORT socket, so that a new master (USR2, --takeover) given
the same command line can bind the port while the old one still serves it;
outside those two cases a port already held is refused.

The endpoint is bounded so that no client can cost the master more than a
few descriptors and threads: at most MAX_CONNECTIONS are served at once,
each in a thread of its own, with READ_TIMEOUT to send its request and
CONNECTION_TIMEOUT in all. A new connection beyond the cap cuts the oldest
one still waiting for its request (a scraper sends it at once, a slowloris
never does), or is refused when none waits; cuts are counted
(udp_reader_metrics_connections_cut) and logged.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from udp_reader import sockets
from udp_reader._constants import GSO_SEGMENTS
from udp_reader.serve.exits import ExitCause
from udp_reader.serve.phase import Phase
from udp_reader.serve.slots import SlotState
from udp_reader.serve.snapshot import Snapshot
from udp_reader.serve.workers import State

log = logging.getLogger("udp_reader")

Latest = Callable[[], Optional[Snapshot]]  # the snapshot last published, if any

EXIT_CAUSES = tuple(c.value for c in ExitCause)
# What Slot.reported shows: its reader's state, or draining, or no reader.
SLOT_STATES = tuple(s.value for s in State) + (SlotState.DRAINING.value,
                                               SlotState.NO_READER.value)
PHASES = tuple(p.value for p in Phase)
SHARED = "shared"  # the slot label of the one socket of --shared

MAX_CONNECTIONS = 16       # served at once; a scraper needs one
READ_TIMEOUT = 2.0         # seconds for a connection to send its whole request
CONNECTION_TIMEOUT = 10.0  # seconds any connection may last
LOG_EVERY = 10.0           # seconds between warnings about cut connections


class MetricsError(Exception):
    """--metrics cannot be served: one line for the operator."""


# -- from a snapshot to metric families ------------------------------------------------

def families(snapshot: Snapshot) -> Iterator:
    """The metric families of one snapshot (report.snapshot())."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    def counter(name: str, doc: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
        return CounterMetricFamily("udp_reader_" + name, doc, labels=list(labels))

    def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily("udp_reader_" + name, doc, labels=list(labels))

    slots = snapshot.slots
    # A slot that left the port to be drained and its replacement share a
    # number (and the same totals): one series per number.
    totals: Dict[str, dict] = {}
    states: Dict[str, set] = {}
    for s in slots:
        label = str(s.slot)
        totals.setdefault(label, s.totals)
        states.setdefault(label, set()).add(s.state)

    per_slot = (
        ("received", "Datagrams the slot's workers took from the kernel, across worker "
                     "replacements", ("received",)),
        ("received_bytes", "Bytes of the datagrams the slot's workers took from the kernel",
         ("bytes",)),
        ("delivered", "Datagrams handed to the handler", ("delivered",)),
        ("filtered", "Datagrams outside --min-size/--max-size, never handed to the handler",
         ("too_short", "too_long")),
        ("handler_errors", "Handler calls that raised", ("handler_errors",)),
    )
    for name, doc, keys in per_slot:
        family = counter(name, doc, ["slot"])
        for label, t in totals.items():
            family.add_metric([label], sum(_number(t.get(k)) for k in keys))
        yield family

    # Socket figures: once per socket. With --shared every slot reads the one
    # socket, labelled "shared".
    queued = gauge("queued_bytes", "Bytes waiting in the socket's receive queue (SO_MEMINFO)",
                   ["slot"])
    drops = counter("kernel_drops", "Receive buffers the kernel dropped on the socket because "
                    "its queue was full, since the master took it: one per datagram, but with "
                    f"GRO a dropped merged receive of up to {GSO_SEGMENTS} datagrams counts once", ["slot"])
    socket_figures: Dict[str, List[int]] = {}
    for s in slots:
        label = SHARED if snapshot.shared else str(s.slot)
        figures = [s.queued_bytes, s.kernel_drops]
        if label not in socket_figures:
            socket_figures[label] = figures
        elif label != SHARED:  # a draining socket and its replacement: both count
            socket_figures[label] = [a + b for a, b in zip(socket_figures[label], figures)]
    for label, (queue, dropped) in socket_figures.items():
        queued.add_metric([label], queue)
        drops.add_metric([label], dropped)
    yield queued
    yield drops

    state = gauge("slot_state", "1 for the state the slot is in (its reader's, or draining, "
                  "or no reader), 0 for the others", ["slot", "state"])
    for label, now in states.items():
        for value in sorted(set(SLOT_STATES) | now, key=_state_order):
            state.add_metric([label, value], 1 if value in now else 0)
    yield state

    worker_state = gauge("worker_state", "1 for each worker process, with its slot, pid and "
                         "state", ["slot", "pid", "state"])
    started = gauge("worker_start_time_seconds", "When the worker process started "
                    "(seconds since the epoch)", ["slot", "pid"])
    worker_received = counter("worker_received", "Datagrams this worker process took from "
                              "the kernel", ["slot", "pid"])
    worker_delivered = counter("worker_delivered", "Datagrams this worker process handed to "
                               "the handler", ["slot", "pid"])
    for s in slots:
        for w in s.workers:
            labels = [str(s.slot), str(w.pid)]
            stats = w.stats
            worker_state.add_metric(labels + [w.state], 1)
            started.add_metric(labels, w.started)
            worker_received.add_metric(labels, _number(stats.get("received")))
            worker_delivered.add_metric(labels, _number(stats.get("delivered")))
    yield from (worker_state, started, worker_received, worker_delivered)

    events = snapshot.events
    starts = counter("worker_starts", "Worker processes started")
    starts.add_metric([], _number(events.get("worker_starts")))
    yield starts
    exits = counter("worker_exits", "Worker processes that ended, by cause: left (told to), "
                    "crashed, killed (stuck past its time), failed_start, dismissed (ended "
                    "before it read)", ["cause"])
    causes = list(EXIT_CAUSES) + sorted(k[len("exits_"):] for k in events
                                        if k.startswith("exits_")
                                        and k[len("exits_"):] not in EXIT_CAUSES)
    for cause in causes:
        exits.add_metric([cause], _number(events.get("exits_" + cause)))
    yield exits
    restarts = counter("rolling_restarts", "Rolling restarts completed")
    restarts.add_metric([], _number(events.get("restarts")))
    yield restarts

    target = gauge("workers", "Worker processes the master aims to run (--workers, TTIN, TTOU)")
    target.add_metric([], snapshot.workers)
    yield target
    phase = gauge("phase", "1 for the master's phase, 0 for the others", ["phase"])
    current = snapshot.phase
    for value in PHASES + (() if current in PHASES else (current,)):
        phase.add_metric([value], 1 if value == current else 0)
    yield phase


def _number(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _state_order(state: str) -> Tuple[int, str]:
    return (SLOT_STATES.index(state) if state in SLOT_STATES else len(SLOT_STATES), state)


class SnapshotCollector:
    """A prometheus_client collector over the latest published snapshot."""

    def __init__(self, latest: Latest) -> None:
        self._latest = latest

    def collect(self) -> Iterator:
        snapshot = self._latest()
        if snapshot is not None:
            yield from families(snapshot)


# -- the HTTP server ---------------------------------------------------------------------

class _QuietHandler(WSGIRequestHandler):
    timeout = READ_TIMEOUT  # for each read and write

    def parse_request(self) -> bool:
        complete = super().parse_request()  # the request line and headers are read
        if complete:
            self.server.answering(self.request)  # type: ignore[attr-defined]
        return complete

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.opened = time.monotonic()
        self.answering = False  # its request is in: no longer cut for a newcomer
        self.cut = False

    def close_now(self) -> None:
        """Wake its thread, which closes it."""
        self.cut = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Server(WSGIServer):
    """A thread per connection, at most MAX_CONNECTIONS of them (and as many
    cut ones on their way out)."""

    def __init__(self, sock: socket.socket) -> None:
        self.address_family = sock.family
        super().__init__(sock.getsockname(), _QuietHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()
        # HTTPServer.server_bind would ask the resolver for a name: not wanted.
        self.server_name = "udp-reader"
        self.server_port = self.server_address[1]
        self.setup_environ()
        self._open: Dict[socket.socket, _Connection] = {}
        self._lock = threading.Lock()
        self.connections_cut = 0   # cut or refused, since start
        self._logged_cut = 0
        self._logged_at = -LOG_EVERY

    def answering(self, sock: socket.socket) -> None:
        with self._lock:
            if sock in self._open:
                self._open[sock].answering = True

    def process_request(self, request: socket.socket, client_address: object) -> None:
        with self._lock:
            self._expire()
            live = [c for c in self._open.values() if not c.cut]
            waiting = [c for c in live if not c.answering]
            if len(live) >= MAX_CONNECTIONS and waiting:
                min(waiting, key=lambda c: c.opened).close_now()
                self.connections_cut += 1
            elif len(live) >= MAX_CONNECTIONS or len(self._open) >= 2 * MAX_CONNECTIONS:
                self.connections_cut += 1
                self.shutdown_request(request)
                return
            self._open[request] = _Connection(request)
        thread = threading.Thread(target=self._serve_one, args=(request, client_address),
                                  name="metrics-connection", daemon=True)
        thread.start()

    def _serve_one(self, request: socket.socket, client_address: object) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            pass  # a client gone or cut: nothing to tell
        finally:
            with self._lock:
                self._open.pop(request, None)
            self.shutdown_request(request)

    def service_actions(self) -> None:
        """Between accepts (and every poll_interval): time limits, and the log."""
        with self._lock:
            self._expire()
        now = time.monotonic()
        if self.connections_cut != self._logged_cut and now - self._logged_at >= LOG_EVERY:
            log.warning("metrics: %d connection(s) cut or refused so far: more than %d open, "
                        "or silent for %g s", self.connections_cut, MAX_CONNECTIONS,
                        READ_TIMEOUT)
            self._logged_cut, self._logged_at = self.connections_cut, now

    def _expire(self) -> None:
        now = time.monotonic()
        for c in self._open.values():
            age = now - c.opened
            if not c.cut and (age > CONNECTION_TIMEOUT
                              or (not c.answering and age > READ_TIMEOUT)):
                c.close_now()
                self.connections_cut += 1


class _EndpointCollector:
    """The endpoint's own figure: connections it cut or refused."""

    def __init__(self, server: _Server) -> None:
        self._server = server

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(
            "udp_reader_metrics_connections_cut", "Connections to this endpoint cut or "
            f"refused: beyond {MAX_CONNECTIONS} open, or without a request within "
            f"{READ_TIMEOUT:g} s, or open longer than {CONNECTION_TIMEOUT:g} s")
        family.add_metric([], self._server.connections_cut)
        yield family


class MetricsServer:
    """The bound metrics endpoint; start() serves it from a daemon thread."""

    def __init__(self, sock: socket.socket, latest: Latest) -> None:
        from prometheus_client import CollectorRegistry, make_wsgi_app
        from prometheus_client.process_collector import ProcessCollector

        registry = CollectorRegistry(auto_describe=False)
        registry.register(SnapshotCollector(latest))  # type: ignore[arg-type]
        ProcessCollector(registry=registry)  # process_*: the master's CPU, memory, fds
        self._server = _Server(sock)
        registry.register(_EndpointCollector(self._server))  # type: ignore[arg-type]
        self._server.set_app(make_wsgi_app(registry))
        self._thread: Optional[threading.Thread] = None
        host, port = sock.getsockname()[:2]
        self.address = sockets.format_address(host, port)

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.25}, name="metrics",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


def bind(address: str, latest: Latest, *, share: bool = False
         ) -> MetricsServer:
    """Bind the endpoint at `address` (HOST:PORT, :PORT for every address).
    `share`: this master takes over from another (USR2, --takeover), which
    may hold the port. Raises MetricsError."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise MetricsError('--metrics needs prometheus_client: '
                           'pip install "udp-reader[metrics]"') from None
    try:
        host, port = sockets.parse_address(address)
    except (TypeError, ValueError) as e:
        raise MetricsError(f"--metrics: {e}") from None
    try:
        sock = _listen(host, port, share)
    except OSError as e:
        where = sockets.format_address(host, port)
        if e.errno == errno.EADDRINUSE:
            raise MetricsError(f"--metrics {where}: the port is in use") from None
        raise MetricsError(f"--metrics {where}: {e.strerror or e}") from None
    return MetricsServer(sock, latest)


def _listen(host: str, port: int, share: bool) -> socket.socket:
    family, sockaddr = _resolve(host, port)
    if port and not share:
        # SO_REUSEPORT would let us join a port another master of this user
        # holds: make sure nobody does.
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _dual_stack(probe, host)
            probe.bind(sockaddr)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        _dual_stack(sock, host)
        sock.bind(sockaddr)
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


def _resolve(host: str, port: int) -> Tuple[int, tuple]:
    if not host:  # every address: IPv6 and IPv4 where IPv6 is there
        return (socket.AF_INET6, ("::", port)) if socket.has_ipv6 and _ipv6_works() \
            else (socket.AF_INET, ("0.0.0.0", port))
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _ipv6_works() -> bool:
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True


def _dual_stack(sock: socket.socket, host: str) -> None:
    if not host and sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
