"""The record format of forwarded messages: packed and unpacked again
(batches made without a socket), and what it refuses."""

from __future__ import annotations

import socket
import struct

import numpy as np
import pytest

from udp_reader._core import _batch_of, _dtype
from udp_reader.forward.records import ENTRY, HEADER, pack, spans, unpack


def batch_of(payloads, *, family=socket.AF_INET, stamped=True, ip_fields=True, gap=7):
    """A Batch of `payloads` as a receive gives them: each in its own slot
    of an arena, `gap` bytes apart, with addresses, ports and times."""
    records = np.zeros(len(payloads), dtype=_dtype())
    arena = bytearray()
    for i, payload in enumerate(payloads):
        arena += b"\xee" * gap
        records[i]["offset"] = len(arena)
        records[i]["length"] = len(payload)
        arena += payload
    records["timestamp_ns"] = (1_700_000_000_000_000_000 + np.arange(len(payloads)) * 1000
                               if stamped else 0)
    records["ifindex"] = 1 + np.arange(len(payloads)) % 3
    records["family"] = family
    records["src_port"] = 40000 + np.arange(len(payloads))
    records["ttl"] = 64
    records["tos"] = 0x2e
    size = 4 if family == socket.AF_INET else 16
    records["src_addr"][:, :size] = np.frombuffer(
        socket.inet_pton(family, "192.0.2.7" if size == 4 else "2001:db8::7"), np.uint8)
    records["dst_addr"][:, :size] = np.frombuffer(
        socket.inet_pton(family, "198.51.100.1" if size == 4 else "2001:db8::1"), np.uint8)
    return _batch_of(records.tobytes(), bytes(arena), ip_fields=ip_fields)


def facts(packet):
    return (packet.data, packet.src, packet.dst, packet.ifindex, packet.timestamp_ns,
            packet.family, packet.ttl, packet.tos)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
@pytest.mark.parametrize("ip_fields", [True, False])
def test_round_trip_keeps_every_fact_of_every_datagram(family, ip_fields):
    payloads = [b"", b"x", bytes(range(256)) * 5, b"last one"]
    batch = batch_of(payloads, family=family, ip_fields=ip_fields)
    message = pack(batch, 5353)
    assert len(message) == HEADER.size + len(payloads) * ENTRY.itemsize + sum(map(len, payloads))
    got = unpack(message)
    assert [facts(p) for p in got.batch] == [facts(p) for p in batch]
    assert got.dst_port.tolist() == [5353] * len(payloads)
    assert (got.batch.ttl is None) == (not ip_fields)


def test_an_unpacked_packet_cannot_answer():
    got = unpack(pack(batch_of([b"q"]), 53))
    with pytest.raises(ValueError, match="a forwarded packet cannot answer"):
        got.batch[0].reply(b"a")


def test_an_empty_batch_is_a_message_of_none():
    got = unpack(pack(batch_of([]), 9))
    assert len(got.batch) == 0 and len(got.dst_port) == 0


def test_a_datagram_without_a_kernel_time_is_stamped_with_the_packing():
    batch = batch_of([b"a", b"b"], stamped=False)
    got = unpack(pack(batch, 9))
    assert all(p.timestamp_ns > 1_600_000_000 * 10**9 for p in got.batch)


def test_the_header_says_what_follows():
    magic, version, flags, entry_size, count, total = HEADER.unpack_from(
        pack(batch_of([b"abc", b"de"]), 9))
    assert (magic, version, flags, entry_size, count, total) == (b"UDPR", 1, 1, 56, 2, 5)


@pytest.mark.parametrize("damage, said", [
    (lambda m: m[:10], "shorter than the 16-byte header"),
    (lambda m: b"JUNK" + m[4:], "magic"),
    (lambda m: m[:4] + b"\x02" + m[5:], "version 2"),
    (lambda m: m[:6] + struct.pack("<H", 48) + m[8:], "entries of 48 bytes"),
    (lambda m: m[:-1], "its header announces"),
    (lambda m: m + b"!", "its header announces"),
    (lambda m: m[:HEADER.size + 8] + struct.pack("<I", 2) + m[HEADER.size + 12:],
     "lengths add up to"),
    (lambda m: b'{"not": "ours", "at all": 1}', "magic"),
])
def test_a_damaged_or_foreign_message_is_refused_saying_why(damage, said):
    message = pack(batch_of([b"abc", b"de"]), 9)
    with pytest.raises(ValueError, match=said):
        unpack(damage(message))


@pytest.mark.parametrize("limit", [16 + 56 + 300, 1000, 1 << 20, 10])
def test_spans_pack_a_batch_in_order_into_messages_within_a_limit(limit):
    payloads = [bytes([i]) * n for i, n in enumerate([300, 0, 5, 280, 1, 900, 40])]
    batch = batch_of(payloads)
    runs = list(spans(batch, limit))
    assert [i for a, b in runs for i in range(a, b)] == list(range(len(payloads)))
    messages = [pack(batch, 9, a, b) for a, b in runs]
    # Within the limit, unless one datagram alone is larger.
    assert all(len(m) <= limit or b - a == 1 for m, (a, b) in zip(messages, runs))
    # As few messages as the limit allows: no two neighbours would fit in one.
    assert all(len(m) + len(n) - 16 > limit for m, n in zip(messages, messages[1:]))
    assert [p.data for m in messages for p in unpack(m).batch] == payloads
