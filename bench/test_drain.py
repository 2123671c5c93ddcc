"""Drain throughput: this package per packet and per batch against a plain C
recvmmsg loop, Python recvfrom and recvmsg loops, and asyncio's and uvloop's
datagram endpoints; the package again with ip_fields=True (its cost); per
batch with GRO against the C loop with GRO; and datagrams sent to a
multicast group, drained in a network namespace of their own."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys

import pytest

from conftest import HERE, record
from udp_reader.cli import bench as contenders
from udp_reader.cli.bench import Queue

COUNT = 100_000
WITH_IP_FIELDS = {
    "per_batch_ip": functools.partial(contenders.reader_per_batch, ip_fields=True),
    "per_packet_ip": functools.partial(contenders.reader_per_packet, ip_fields=True),
}
NAMES = ["c_loop", *contenders.available(), *WITH_IP_FIELDS]


@pytest.mark.parametrize("size", [64, 512, 1400])
@pytest.mark.parametrize("contender", NAMES)
def test_drain(contender, size, measure, benchmark, c_loop):
    benchmark.group = f"drain {size:4d} B"
    if contender == "c_loop":
        def prepare(q):
            return lambda: c_loop.drain(q.sock.fileno(), q.count, 64)
    else:
        prepare = WITH_IP_FIELDS.get(contender) or contenders.CONTENDERS[contender]
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


def _can_unshare() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -n` (root): lo's multicast "
                                               "settings must not touch the host")
def test_drain_multicast(c_loop):
    """64-byte datagrams sent to a group joined on lo, drained by the C loop
    and per batch, interleaved with the same drains of unicast datagrams
    (multicast_drain.py, under unshare -n: 7 rounds, medians)."""
    result = subprocess.run(["unshare", "-n", sys.executable, str(HERE / "multicast_drain.py"),
                             c_loop._name, str(COUNT), "7"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    medians = json.loads(result.stdout)
    for name, seconds in medians.items():
        record("multicast   64 B", name, seconds)
        print(f"{name:20} {COUNT / seconds:12,.0f} packets/s")
