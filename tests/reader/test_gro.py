"""UDP GRO: merged receives split into their segments, on GSO-fed queues."""

import socket
import struct

import numpy as np
import pytest

from conftest import collect
from udp_reader import Reader
from udp_reader.cli.send import LoadGenerator
from udp_reader.sockets import UDP_SEGMENT


def send_gso(address, payload: bytes, segment: int) -> None:
    """One sendmsg the kernel cuts into datagrams of `segment` bytes."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendmsg([payload], [(socket.IPPROTO_UDP, UDP_SEGMENT, struct.pack("H", segment))],
                  0, address)


def numbered(count: int, size: int) -> bytes:
    return b"".join(i.to_bytes(4, "little") * (size // 4) for i in range(count))


@pytest.mark.parametrize("batches", [False, True])
def test_merged_receive_is_split_with_a_shorter_last_segment(batches):
    with Reader("127.0.0.1:0", gro=True) as reader:
        assert reader.gro
        payload = numbered(10, 100) + b"tail" * 9 + b"t"  # 10 x 100, then 37
        send_gso(reader.address, payload, 100)
        got = collect(reader, 11, keep=lambda p: (p.data, p.segment, p.src[0]),
                      batches=batches)
        stats = reader.stats
    assert [d for d, _, _ in got] == [payload[i:i + 100] for i in range(0, 1037, 100)]
    assert {seg for _, seg, _ in got} == {100}  # it did arrive merged
    assert {src for _, _, src in got} == {"127.0.0.1"}
    assert stats.received == 11 and stats.batches == 1


def test_length_filter_applies_per_segment():
    with Reader("127.0.0.1:0", gro=True, min_size=40, max_size=100) as reader:
        send_gso(reader.address, numbered(5, 100) + b"x" * 37, 100)   # last too short
        send_gso(reader.address, numbered(3, 120), 120)                # all too long
        send_gso(reader.address, b"end" * 20, 100)                     # 60: fine
        got = collect(reader, 6, keep=len)
        s = reader.stats
    assert got == [100] * 5 + [60]
    assert (s.received, s.delivered, s.too_short, s.too_long) == (10, 6, 1, 3)


@pytest.mark.parametrize("gro", [False, True])
def test_gso_fed_queue_gives_exactly_the_segments_sent(gro):
    with Reader("127.0.0.1:0", gro=gro, rcvbuf=64 << 20) as reader:
        generator = LoadGenerator(reader.address, sizes=(64, 64), gso=True, flows=3)
        try:
            report = generator.run(count=20_000)
        finally:
            generator.close()
        numbers = collect(reader, report.sent, batches=True,
                          keep=lambda p: int.from_bytes(p.data[:8], "little"))
        assert (reader.stats.batches < 100) == gro  # merged: few receives
    assert report.sent == 20_000
    assert sorted(numbers) == list(range(20_000))


def test_payloads_of_a_merged_receive_are_a_view():
    with Reader("127.0.0.1:0", gro=True) as reader:
        send_gso(reader.address, numbered(8, 64), 64)
        seen = []

        def on_batch(batch):
            rows = batch.payloads(4)
            assert np.shares_memory(rows, batch.payload)
            seen.extend(rows.view("<u4")[:, 0].tolist())
            reader.stop()

        reader.run_batches(on_batch)
    assert seen == list(range(8))


def test_filtered_batch_payloads_are_a_compact_copy():
    with Reader("127.0.0.1:0", min_size=4) as reader:
        for p in (b"\x01\0\0\0", b"x", b"\x02\0\0\0", b"\x03\0\0\0"):
            reader.socket.sendto(p, reader.address)
        seen = []

        def on_batch(batch):
            rows = batch.payloads(4)
            assert not np.shares_memory(rows, batch.payload)
            seen.extend(rows.view("<u4")[:, 0].tolist())
            reader.stop()

        reader.run_batches(on_batch)
    assert seen == [1, 2, 3]
