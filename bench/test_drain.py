"""Drain throughput: this package per packet and per batch against a Python
recvfrom loop, a Python recvmsg loop with pktinfo, and a plain C loop."""

from __future__ import annotations

import pytest

from conftest import Queue
from udp_reader import Reader

COUNT = 100_000
CONTENDERS = ["c_loop", "batch", "packet", "py_recvfrom", "py_recvmsg"]


def drain_packets(queue: Queue) -> None:
    with Reader.from_socket(queue.sock) as reader:
        left = queue.count

        def on_packet(packet):
            nonlocal left
            left -= 1
            if not left:
                reader.stop()

        reader.run(on_packet)


def drain_batches(queue: Queue) -> None:
    with Reader.from_socket(queue.sock) as reader:
        left = queue.count

        def on_batch(batch):
            nonlocal left
            left -= len(batch)
            if not left:
                reader.stop()

        reader.run_batches(on_batch)


def drain_recvfrom(queue: Queue) -> None:
    recvfrom = queue.sock.recvfrom
    for _ in range(queue.count):
        recvfrom(2048)


def drain_recvmsg(queue: Queue) -> None:
    recvmsg = queue.sock.recvmsg
    for _ in range(queue.count):
        recvmsg(2048, 256)


@pytest.mark.parametrize("size", [64, 512, 1400])
@pytest.mark.parametrize("contender", CONTENDERS)
def test_drain(contender, size, measure, benchmark, c_loop):
    benchmark.group = f"drain {size:4d} B"
    drains = {
        "c_loop": lambda q: c_loop(q.sock.fileno(), q.count, 64),
        "batch": drain_batches,
        "packet": drain_packets,
        "py_recvfrom": drain_recvfrom,
        "py_recvmsg": drain_recvmsg,
    }
    queue = Queue(COUNT, size)
    try:
        measure(queue, drains[contender])
    finally:
        queue.close()
