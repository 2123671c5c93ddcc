"""Request/response throughput of an echo server, fill then answer.

Every round queues the same K requests on a wildcard server socket from
many client sockets (each its own source port), then times a contender
taking all K and sending every reply. Each reply goes to the sender's own
queue (sized to hold them all) and is counted after the clock stops: a
round that lost a reply fails. Contenders: this package per packet
(`packet.reply(packet)`) and per batch (`batch.reply(batch)`), a plain C
recvmmsg+sendmmsg echo with IP_PKTINFO (the limit), uvloop's and asyncio's
datagram endpoints and a Python recvmsg/sendmsg loop with pktinfo.

The clients ask 127.0.0.1, the address the kernel would answer from
anyway, so the event-loop endpoints (which cannot choose a source) get
their replies counted too; the others still pay for setting it.

    python -m pytest bench/test_echo.py                    # timed, 100,000 requests
    python -m pytest bench/test_echo.py --benchmark-disable --echo-count 2000   # a quick check
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import pathlib
import socket
import struct
import subprocess
import tempfile

import pytest

from conftest import record
from udp_reader import Reader, sockets
from udp_reader.cli.bench import RCVBUF, event_loop, have_uvloop, new_uvloop

HERE = pathlib.Path(__file__).parent
CLIENTS = 32
CLIENT_RCVBUF = 32 << 20
IN_PKTINFO = struct.Struct("I4s4s")  # ifindex, spec_dst, addr


class EchoQueue:
    """A wildcard server socket, and `clients` connected sockets that fill
    it with `count` requests of `size` bytes, taking turns (as independent
    clients would: no run of requests from one client for GSO to merge),
    and take the replies."""

    def __init__(self, count: int, size: int, clients: int = CLIENTS) -> None:
        self.count = count
        self.payload = os.urandom(size)
        self.server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.server.bind(("0.0.0.0", 0))
        sockets.enable_metadata(self.server)
        sockets.set_rcvbuf(self.server, RCVBUF)
        port = self.server.getsockname()[1]
        self.clients = []
        try:
            for _ in range(clients):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self.clients.append(sock)
                sockets.set_rcvbuf(sock, CLIENT_RCVBUF)
                sock.connect(("127.0.0.1", port))
        except BaseException:
            self.close()
            raise

    def fill(self) -> None:
        drops = sockets.kernel_drops(self.server)
        sends = [sock.send for sock in self.clients]
        payload, clients = self.payload, len(sends)
        for i in range(self.count):
            sends[i % clients](payload)
        if sockets.kernel_drops(self.server) != drops:
            raise RuntimeError("the server queue overflowed while filling: fewer requests, please")

    def replies(self) -> int:
        """Empty the clients' queues; how many replies they held."""
        return sum(sockets.discard_queue(sock) for sock in self.clients)

    def close(self) -> None:
        self.server.close()
        for sock in self.clients:
            sock.close()


def per_packet(q: EchoQueue):
    reader = Reader.from_socket(q.server)
    left = q.count

    def on_packet(packet):
        nonlocal left
        packet.reply(packet)
        left -= 1
        if not left:
            reader.stop()

    def run():
        with reader:
            reader.run(on_packet)
    return run


def per_batch(q: EchoQueue):
    reader = Reader.from_socket(q.server)
    left = q.count

    def on_batch(batch):
        nonlocal left
        batch.reply(batch)
        left -= len(batch)
        if not left:
            reader.stop()

    def run():
        with reader:
            reader.run_batches(on_batch)
    return run


def py_recvmsg(q: EchoQueue):
    sock, count = q.server, q.count
    sock.setsockopt(socket.IPPROTO_IP, sockets.IP_PKTINFO, 1)

    def run():
        recvmsg, sendmsg = sock.recvmsg, sock.sendmsg
        level, kind = socket.IPPROTO_IP, sockets.IP_PKTINFO
        for _ in range(count):
            data, ancdata, _, address = recvmsg(2048, 256)
            control = []
            for cmsg_level, cmsg_type, info in ancdata:
                if cmsg_level == level and cmsg_type == kind:
                    ifindex, _, dst = IN_PKTINFO.unpack(info)
                    control = [(level, kind, IN_PKTINFO.pack(ifindex, dst, bytes(4)))]
            sendmsg([data], control, 0, address)
    return run


def asyncio_echo(q: EchoQueue):
    return event_loop(q.server, q.count, asyncio.new_event_loop, echo=True)


def uvloop_echo(q: EchoQueue):
    return event_loop(q.server, q.count, new_uvloop, echo=True)


CONTENDERS = {"per_packet": per_packet, "per_batch": per_batch, "py_recvmsg": py_recvmsg,
              "asyncio": asyncio_echo}
if have_uvloop():
    CONTENDERS["uvloop"] = uvloop_echo


@pytest.fixture(scope="session")
def c_echo():
    """echo(fd, count, batch) from bench/c_echo.c, compiled for this run."""
    out = pathlib.Path(tempfile.mkdtemp()) / "c_echo.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(out),
                    str(HERE / "c_echo.c")], check=True)
    lib = ctypes.CDLL(str(out))
    lib.echo.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_int]
    lib.echo.restype = ctypes.c_long
    return lib


@pytest.mark.parametrize("size", [64, 512])
@pytest.mark.parametrize("contender", ["c_echo", *CONTENDERS])
def test_echo(contender, size, benchmark, request, c_echo):
    benchmark.group = f"echo {size:4d} B"
    count = request.config.getoption("--echo-count")
    if contender == "c_echo":
        def prepare(q):
            return lambda: c_echo.echo(q.server.fileno(), q.count, 64)
    else:
        prepare = CONTENDERS[contender]
    queue = EchoQueue(count, size)
    runs = []

    def setup():
        check()
        queue.fill()
        runs.append(prepare(queue))
        return (), {}

    def check():
        if runs:  # the previous round's replies, every one
            got = queue.replies()
            assert got == count, f"{contender}: {got} of {count} replies arrived"

    try:
        benchmark.pedantic(lambda: runs[-1](), setup=setup, rounds=7)
        check()
    finally:
        queue.close()
    if not benchmark.disabled:
        median = benchmark.stats.stats.median
        record(benchmark.group, contender, median)
        benchmark.extra_info["requests_per_second"] = count / median
