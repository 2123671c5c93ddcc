"""Property-based tests (hypothesis) of the engine's control-message parser
and GRO splitter, fed arbitrary bytes through a test-only entry point: no
socket."""

from __future__ import annotations

import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import cmsg
from udp_reader._core import _engine_feed

windows = st.tuples(st.integers(0, 1500), st.integers(0, 1500)).map(sorted)

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
