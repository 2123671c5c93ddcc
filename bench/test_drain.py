"""Drain throughput: this package per packet and per batch against a plain C
recvmmsg loop, Python recvfrom and recvmsg loops, and asyncio's and uvloop's
datagram endpoints; and per batch with GRO against the C loop with GRO."""

from __future__ import annotations

import pytest

from udp_reader import benchmark as contenders
from udp_reader.benchmark import Queue

COUNT = 100_000
NAMES = ["c_loop", *contenders.available()]


@pytest.mark.parametrize("size", [64, 512, 1400])
@pytest.mark.parametrize("contender", NAMES)
def test_drain(contender, size, measure, benchmark, c_loop):
    benchmark.group = f"drain {size:4d} B"
    if contender == "c_loop":
        def prepare(q):
            return lambda: c_loop.drain(q.sock.fileno(), q.count, 64)
    else:
        prepare = contenders.CONTENDERS[contender]
    queue = Queue(COUNT, size)
    try:
        measure(queue, prepare)
    finally:
        queue.close()


@pytest.mark.parametrize("contender", ["c_loop", "per_batch"])
def test_drain_gro(contender, measure, benchmark, c_loop):
    """64-byte segments sent with GSO, 64 per message, received merged."""
    benchmark.group = "gro   64 B segments"
    if contender == "c_loop":
        def prepare(q):
            return lambda: c_loop.drain_gro(q.sock.fileno(), q.count, 64)
    else:
        prepare = contenders.reader_per_batch
    queue = Queue(1_000_000, 64, gso=True)
    try:
        measure(queue, prepare)
    finally:
        queue.close()
