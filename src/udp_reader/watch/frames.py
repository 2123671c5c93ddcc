"""From a captured IP datagram to the record a Reader makes of a received
one (Batch.records' layout), so both feed the same formats and --top."""

from __future__ import annotations

import socket
import struct
from typing import Tuple

from udp_reader._core import _dtype

PAD = bytes(12)  # an IPv4 address fills the first 4 of the record's 16 bytes
_V4 = struct.Struct("!BBH4xBx2x4s4s")  # version/IHL, TOS, total length, TTL, src, dst
_V6 = struct.Struct("!IHxB16s16s")      # version/class/flow, payload length, hops, src, dst
_UDP = struct.Struct("!HHH")            # source port, destination port, length


def record_struct() -> struct.Struct:
    """The engine's record as a struct, laid out from its numpy dtype (the
    one declaration of it): fields in offset order, padding between."""
    dtype = _dtype()
    fields = sorted(dtype.fields.items(), key=lambda kv: kv[1][1])
    codes = {"<u8": "Q", "<u4": "I", "<u2": "H", "|u1": "B"}
    fmt, at = "<", 0
    for name, (kind, offset) in fields:
        fmt += f"{offset - at}x" if offset > at else ""
        fmt += f"{kind.shape[0]}s" if kind.shape else codes[kind.str]
        at = offset + kind.itemsize
    fmt += f"{dtype.itemsize - at}x" if dtype.itemsize > at else ""
    assert [name for name, _ in fields] == list(RECORD_FIELDS), "record fields changed"
    return struct.Struct(fmt)


# The order record_struct() packs them in.
RECORD_FIELDS = ("timestamp_ns", "offset", "length", "ifindex", "segment", "family",
                 "src_port", "ttl", "tos", "src_addr", "dst_addr")


def parse(buffer, at: int, size: int) -> Tuple[int, int, bool, tuple]:
    """The UDP datagram in the IP packet of `size` bytes at buffer[at:]:
    (payload offset, payload length, cut, fields for the record after
    timestamp, offset and length: family, src_port, ttl, tos, src, dst).
    `cut` when fewer bytes came than the UDP header announces: the first
    fragment of a fragmented datagram. The kernel's filter let through
    only UDP with its header in the packet."""
    version = buffer[at] >> 4
    if version == 4:
        first, tos, total, ttl, src, dst = _V4.unpack_from(buffer, at)
        header = (first & 0xf) * 4
        family, src, dst, end = socket.AF_INET, src + PAD, dst + PAD, min(size, total)
    else:
        first, total, ttl, src, dst = _V6.unpack_from(buffer, at)
        header, tos = 40, (first >> 20) & 0xff
        family, end = socket.AF_INET6, min(size, 40 + total)
    sport, _, udp_length = _UDP.unpack_from(buffer, at + header)
    start = header + 8
    have = max(end - start, 0)
    want = max(udp_length - 8, 0)
    return (at + start, min(have, want), have < want,
            (family, sport, ttl, tos, bytes(src), bytes(dst)))
