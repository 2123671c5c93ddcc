"""Property-based tests (hypothesis) of the length filter, batch assembly
and GRO splitting, on real sockets."""

from __future__ import annotations

import os
import socket
import struct
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from udp_reader import Reader
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
