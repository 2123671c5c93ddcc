"""Property-based tests (hypothesis) of the length filter, batch assembly
and GRO splitting, on real sockets; and the engine's control-message parser
and GRO splitter fed arbitrary bytes through a test-only entry point."""

from __future__ import annotations

import os
import socket
import struct
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from udp_reader import Reader
from udp_reader._core import _engine_feed
from udp_reader.sockets import UDP_SEGMENT

SOCKET_EXAMPLES = settings(max_examples=40, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow])
DEADLINE = 10.0


def drain(reader: Reader, expected: int) -> list:
    """Everything delivered until `expected` datagrams were received (or the
    deadline passed); waits only on the kernel, never on a callback."""
    got = []
    deadline = time.monotonic() + DEADLINE
    while reader.stats.received < expected and time.monotonic() < deadline:
        batch = reader.receive_batch()
        if batch is None:
            time.sleep(0.001)
            continue
        got.extend(p.data for p in batch)
    return got


windows = st.tuples(st.integers(0, 1500), st.integers(0, 1500)).map(sorted)


@SOCKET_EXAMPLES
@given(sizes=st.lists(st.integers(0, 1500), max_size=150), window=windows,
       batch_size=st.integers(1, 70))
def test_filter_and_batches_deliver_exactly_what_fits(sizes, window, batch_size):
    low, high = window
    payloads = [os.urandom(n) for n in sizes]
    with Reader("127.0.0.1:0", min_size=low, max_size=high, batch_size=batch_size,
                rcvbuf=8 << 20) as reader, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for p in payloads:
            s.sendto(p, reader.address)
        got = drain(reader, len(payloads))
        stats = reader.stats
    assert got == [p for p in payloads if low <= len(p) <= high]
    assert stats.received == len(payloads)
    assert stats.delivered + stats.too_short + stats.too_long == stats.received
    assert stats.too_short == sum(len(p) < low for p in payloads)


@SOCKET_EXAMPLES
@given(segment=st.integers(1, 1400), count=st.integers(2, 64), last=st.integers(1, 1400),
       window=windows)
def test_gro_split_gives_back_the_segments(segment, count, last, window):
    low, high = window
    last = min(last, segment)
    payload = os.urandom(segment * (count - 1) + last)
    if len(payload) > 65507:
        payload = payload[:65507 - 65507 % segment] or payload[:segment]
    chunks = [payload[i:i + segment] for i in range(0, len(payload), segment)]
    with Reader("127.0.0.1:0", gro=True, min_size=low, max_size=high) as reader, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendmsg([payload], [(socket.IPPROTO_UDP, UDP_SEGMENT, struct.pack("H", segment))],
                  0, reader.address)
        got = drain(reader, len(chunks))
        stats = reader.stats
    assert got == [c for c in chunks if low <= len(c) <= high]
    assert stats.received == len(chunks)
    assert stats.delivered + stats.too_short + stats.too_long == stats.received


def cmsg(level: int, kind: int, data: bytes, claimed: int | None = None) -> bytes:
    """One control message: its header (with a claimed length, maybe a lie)
    and data, padded as CMSG_SPACE pads."""
    length = 16 + len(data) if claimed is None else claimed
    body = struct.pack("QiI", length, level, kind) + data
    return body + bytes(-len(body) % 8)


LEVELS = [socket.SOL_SOCKET, socket.IPPROTO_IP, socket.IPPROTO_IPV6, socket.IPPROTO_UDP, 99]
TYPES = [8, 50, 35, 40, 104, 0, 255, 1, 2, 52, 67]  # ... IP_TOS, IP_TTL, IPV6_HOPLIMIT, IPV6_TCLASS
control_messages = st.lists(
    st.builds(cmsg, st.sampled_from(LEVELS), st.sampled_from(TYPES),
              st.binary(max_size=40), st.one_of(st.none(), st.integers(0, 400))),
    max_size=6).map(b"".join)
names = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda port, addr: struct.pack("=HH4s8x", socket.AF_INET, port, addr),
              st.integers(0, 65535), st.binary(min_size=4, max_size=4)),
    st.builds(lambda port, addr: struct.pack("=HHI16sI", socket.AF_INET6, port, 0, addr, 0),
              st.integers(0, 65535), st.binary(min_size=16, max_size=16)))


@settings(max_examples=3000, deadline=None)
@given(control=st.one_of(st.binary(max_size=300), control_messages), name=names,
       length=st.integers(0, 70000), flags=st.sampled_from([0, 0x20, 0x08, 0x28]),
       window=windows, gro=st.booleans())
def test_parser_and_splitter_take_any_bytes(control, name, length, flags, window, gro):
    low, high = window
    records, counters = _engine_feed(control, name, length, flags, min_size=low,
                                     max_size=high, gro=gro)
    assert counters["received"] == len(records) + counters["too_short"] + counters["too_long"]
    seen = set()
    for r in records:
        assert low <= r["length"] <= high
        assert r["offset"] + r["length"] <= counters["buffer"]  # never past the buffer
        assert r["offset"] not in seen  # nothing delivered twice
        seen.add(r["offset"])
    if flags & 0x20:  # MSG_TRUNC: nothing is delivered cut short
        assert records == []


@given(last=st.integers(0, 2**32 - 1), stamp=st.integers(0, 2**32 - 1))
def test_drop_count_only_moves_forward(last, stamp):
    # SO_RXQ_OVFL is a wrapping uint32; a stamp behind the last one seen is
    # a datagram queued before drops already counted.
    control = cmsg(socket.SOL_SOCKET, 40, struct.pack("I", stamp))
    _, counters = _engine_feed(control, b"", 1, 0, last_ovfl=last)
    ahead = (stamp - last) % 2**32
    if ahead < 2**31:
        assert (counters["kernel_drops"], counters["last_ovfl"]) == (ahead, stamp)
    else:
        assert (counters["kernel_drops"], counters["last_ovfl"]) == (0, last)
