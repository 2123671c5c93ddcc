"""The record format: a receive's datagrams packed into one message.

Version 1, all integers little-endian:

    header (16 bytes)
        magic        4s   b"UDPR"
        version      u1   1
        flags        u1   bit 0: ttl and tos were read (the reader's ip_fields)
        entry_size   u2   56
        count        u4   datagrams in the message
        payload_size u4   bytes of payload after the entries
    entries (count x 56 bytes), one per datagram, in arrival order
        timestamp_ns u8   arrival, ns since the epoch (the kernel's, else the packing's)
        length       u4   payload bytes
        ifindex      u4   interface it arrived on (an index of the receiving host)
        family       u2   AF_INET or AF_INET6
        src_port     u2
        dst_port     u2
        ttl          u1   TTL or hop limit (0 unless flag bit 0)
        tos          u1   TOS or traffic class (0 unless flag bit 0)
        src_addr     16s  IPv4 in the first 4 bytes
        dst_addr     16s
    payloads: the datagrams' bytes, back to back, in entry order

A message is exactly header + entries + payloads long; anything else is
refused. Packing and unpacking are numpy steps over whole columns, never a
Python step per datagram.
"""

from __future__ import annotations

import struct
import time
from typing import Iterator, NamedTuple, Optional, Tuple

import numpy as np

from udp_reader import Batch
from udp_reader._core import _batch_of, _dtype

MAGIC = b"UDPR"
VERSION = 1
IP_FIELDS = 0x01

HEADER = struct.Struct("<4sBBHII")
ENTRY = np.dtype([
    ("timestamp_ns", "<u8"), ("length", "<u4"), ("ifindex", "<u4"), ("family", "<u2"),
    ("src_port", "<u2"), ("dst_port", "<u2"), ("ttl", "u1"), ("tos", "u1"),
    ("src_addr", "u1", 16), ("dst_addr", "u1", 16),
])
assert HEADER.size == 16 and ENTRY.itemsize == 56  # the documented layout

# The columns an entry shares with a receive's engine record.
_SHARED = ("timestamp_ns", "length", "ifindex", "family", "src_port", "ttl", "tos",
           "src_addr", "dst_addr")


class Unpacked(NamedTuple):
    """One message's datagrams."""
    batch: Batch          # as a receive gives them: Packets, numpy columns
    dst_port: np.ndarray  # each one's destination port (a Batch knows only the address)


def pack(batch: Batch, dst_port: int, start: int = 0, stop: Optional[int] = None) -> bytes:
    """One message holding the datagrams start..stop (all by default) of
    `batch`, which a socket bound to `dst_port` received."""
    records = batch.records[start:stop]
    count = len(records)
    entries = np.zeros(count, dtype=ENTRY)
    for name in _SHARED:
        entries[name] = records[name]
    entries["dst_port"] = dst_port
    unstamped = entries["timestamp_ns"] == 0
    if unstamped.any():  # a reader without timestamps: the packing is the arrival
        entries["timestamp_ns"][unstamped] = time.time_ns()
    ip_fields = batch.ttl is not None
    lengths = records["length"].astype(np.int64)
    total = int(lengths.sum())
    # Gather the payloads: byte k of datagram i sits at offsets[i] + k.
    starts = np.cumsum(lengths) - lengths
    where = np.arange(total, dtype=np.int64) + np.repeat(
        records["offset"].astype(np.int64) - starts, lengths)
    payloads = batch.payload[where]
    head = HEADER.pack(MAGIC, VERSION, IP_FIELDS if ip_fields else 0, ENTRY.itemsize,
                       count, total)
    return b"".join((head, entries.tobytes(), payloads.tobytes()))


def spans(batch: Batch, limit: int) -> Iterator[Tuple[int, int]]:
    """(start, stop) of runs of `batch`'s datagrams, in order, each packed
    into at most `limit` bytes (a server's largest message); a datagram
    too large for any message alone goes alone."""
    sizes = ENTRY.itemsize + batch.records["length"].astype(np.int64)
    ends = np.cumsum(sizes)
    start, packed = 0, 0  # packed: bytes of the datagrams before start
    while start < len(sizes):
        stop = int(np.searchsorted(ends, packed + limit - HEADER.size, side="right"))
        stop = max(stop, start + 1)
        yield start, stop
        packed = int(ends[stop - 1])
        start = stop


def unpack(message: bytes) -> Unpacked:
    """The datagrams of a message that pack() made; ValueError, saying
    what is wrong, for anything else."""
    view = memoryview(message).cast("B")
    if len(view) < HEADER.size:
        raise ValueError(f"not a datagram message: {len(view)} bytes, shorter than "
                         f"the {HEADER.size}-byte header")
    magic, version, flags, entry_size, count, total = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise ValueError(f"not a datagram message: magic {bytes(magic)!r}, not {MAGIC!r}")
    if version != VERSION:
        raise ValueError(f"datagram message version {version}: this reader knows "
                         f"version {VERSION}")
    if entry_size != ENTRY.itemsize:
        raise ValueError(f"datagram message entries of {entry_size} bytes, "
                         f"not {ENTRY.itemsize}")
    expected = HEADER.size + count * ENTRY.itemsize + total
    if len(view) != expected:
        raise ValueError(f"datagram message of {len(view)} bytes: its header "
                         f"announces {expected} ({count} datagrams, {total} payload bytes)")
    end = HEADER.size + count * ENTRY.itemsize
    entries = np.frombuffer(view, dtype=ENTRY, count=count, offset=HEADER.size)
    lengths = entries["length"].astype(np.int64)
    if int(lengths.sum()) != total:
        raise ValueError(f"datagram message lengths add up to {int(lengths.sum())} "
                         f"bytes, not the {total} its header announces")
    records = np.zeros(count, dtype=_dtype())
    for name in _SHARED:
        records[name] = entries[name]
    records["offset"] = np.cumsum(lengths) - lengths
    batch = _batch_of(records, view[end:], ip_fields=bool(flags & IP_FIELDS),
                      source="a forwarded packet")
    return Unpacked(batch, entries["dst_port"].copy())
