"""Fill-then-drain throughput comparison, shared by `udp-reader bench` and
the pytest-benchmark runs in bench/.

Each round queues the same datagrams on one loopback socket, then times only
a contender emptying the queue, so the figure is the reader's own cost and
not the sender's. Contenders are prepared before the clock starts.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from typing import Callable, Dict, List, Optional

from udp_reader import Reader, multicast, sockets
from udp_reader._constants import CONTROL_SIZE
from udp_reader.cli.send import LoadGenerator

RCVBUF = 512 << 20

Drain = Callable[[], None]


class Queue:
    """A loopback UDP socket that can be filled with `count` datagrams."""

    def __init__(self, count: int, size: int, family: int = socket.AF_INET,
                 gso: bool = False, group: Optional[str] = None) -> None:
        """With gso=True the queue is filled through UDP_SEGMENT and the
        socket merges receives (UDP_GRO). With an IPv4 `group`, the socket
        binds every address and joins it on lo, where the datagrams are sent
        (lo needs multicast on and a route for the group: a namespace of
        one's own)."""
        host = "127.0.0.1" if family == socket.AF_INET else "::1"
        self.count = count
        self.size = size
        self.gso = gso
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0" if group else host, 0))
        sockets.enable_metadata(self.sock)
        sockets.set_rcvbuf(self.sock, RCVBUF)
        if gso:
            sockets.enable_gro(self.sock)
        if group:
            multicast.Memberships(self.sock).join(group, interface="lo")
        self.address = (group, self.sock.getsockname()[1]) if group else \
            self.sock.getsockname()[:2]
        self.sender = LoadGenerator(self.address, sizes=(size, size), payload="random", gso=gso)

    def fill(self) -> None:
        drops = sockets.kernel_drops(self.sock)
        self.sender.run(count=self.count)
        if sockets.kernel_drops(self.sock) != drops:
            raise RuntimeError("the queue overflowed while filling: fewer datagrams, please")

    def close(self) -> None:
        self.sock.close()
        self.sender.close()


def reader_per_packet(queue: Queue, **options) -> Drain:
    """`options` are Reader's (ip_fields=True)."""
    reader = Reader.from_socket(queue.sock, gro=queue.gso, **options)
    left = queue.count

    def on_packet(packet):
        nonlocal left
        left -= 1
        if not left:
            reader.stop()

    def drain():
        with reader:
            reader.run(on_packet)
    return drain


def reader_per_batch(queue: Queue, **options) -> Drain:
    reader = Reader.from_socket(queue.sock, gro=queue.gso, **options)
    left = queue.count

    def on_batch(batch):
        nonlocal left
        left -= len(batch)
        if not left:
            reader.stop()

    def drain():
        with reader:
            reader.run_batches(on_batch)
    return drain


def python_recvfrom(queue: Queue) -> Drain:
    recvfrom, count = queue.sock.recvfrom, queue.count

    def drain():
        for _ in range(count):
            recvfrom(2048)
    return drain


def python_recvmsg(queue: Queue) -> Drain:
    recvmsg, count = queue.sock.recvmsg, queue.count

    def drain():
        for _ in range(count):
            recvmsg(2048, CONTROL_SIZE)
    return drain


def event_loop(sock: socket.socket, count: int, new_loop: Callable[[], asyncio.AbstractEventLoop],
               echo: bool = False) -> Drain:
    """A datagram endpoint of `new_loop` on a copy of `sock`, ready to take
    `count` datagrams (and with `echo`, send each back to its sender): the
    event-loop contender of the drain and echo benchmarks."""
    loop = new_loop()
    done = loop.create_future()

    class Endpoint(asyncio.DatagramProtocol):
        handled = 0

        def connection_made(self, transport):
            self.sendto = transport.sendto

        def datagram_received(self, data, addr):
            if echo:
                self.sendto(data, addr)
            self.handled += 1
            if self.handled == count:
                done.set_result(None)

    transport, _ = loop.run_until_complete(
        loop.create_datagram_endpoint(Endpoint, sock=sock.dup()))

    def run():
        try:
            loop.run_until_complete(done)
        finally:
            transport.close()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()
    return run


def new_uvloop() -> asyncio.AbstractEventLoop:
    import uvloop
    return uvloop.new_event_loop()


def asyncio_endpoint(queue: Queue) -> Drain:
    return event_loop(queue.sock, queue.count, asyncio.new_event_loop)


def uvloop_endpoint(queue: Queue) -> Drain:
    return event_loop(queue.sock, queue.count, new_uvloop)


def have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


CONTENDERS: Dict[str, Callable[[Queue], Drain]] = {
    "per_batch": reader_per_batch,
    "per_packet": reader_per_packet,
    "py_recvfrom": python_recvfrom,
    "py_recvmsg": python_recvmsg,
    "asyncio": asyncio_endpoint,
    "uvloop": uvloop_endpoint,
}


def available() -> List[str]:
    return [name for name in CONTENDERS if name != "uvloop" or have_uvloop()]


def time_drain(queue: Queue, contender: str) -> float:
    """Fill the queue, prepare the contender, and time its drain."""
    queue.fill()
    drain = CONTENDERS[contender](queue)
    start = time.perf_counter()
    drain()
    return time.perf_counter() - start


def compare(count: int = 100_000, size: int = 64, rounds: int = 5,
            contenders: Optional[List[str]] = None) -> Dict[str, dict]:
    """Interleaved rounds of every contender on one queue; median rates."""
    names = contenders or available()
    times: Dict[str, List[float]] = {name: [] for name in names}
    queue = Queue(count, size)
    try:
        for _ in range(rounds):
            for name in names:
                times[name].append(time_drain(queue, name))
    finally:
        queue.close()
    return {name: {"median_seconds": statistics.median(t),
                   "packets_per_second": count / statistics.median(t)}
            for name, t in times.items()}
