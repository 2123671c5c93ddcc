"""A NetFlow v5 collector: whole batches decoded with numpy structured
dtypes, flows written as JSON lines.

Every export datagram is a 24-byte header and up to 30 records of 48
bytes, all big-endian. The headers of a batch are read as one array, the
records of every valid datagram are gathered into one array of RECORD and
turned into columns; nothing is parsed a datagram at a time. A datagram
whose version is not 5 or whose length does not match its count is
counted and skipped. Gaps in an exporter's flow sequence are counted as
lost flows; a sequence that goes back (a datagram reordered, an exporter
restarted) is counted apart, never as four billion flows lost. Sequences
are followed for valid datagrams only, for at most MAX_EXPORTERS exporters
(the least recently heard is forgotten first), so forged datagrams from
millions of sources cost bounded memory.

    python examples/netflow_v5.py :2055                         # to stdout
    NETFLOW_OUT=flows.jsonl PYTHONPATH=examples \\
        udp-reader serve netflow_v5:on_batch --bind :2055 --batches

Each flow: exporter, src, dst, sport, dport, proto, packets, bytes, first
and last (Unix milliseconds, through the exporter's 32-bit uptime wrapping
every 49.7 days, as nfdump reads them), tcp_flags, tos, input, output, nexthop,
src_as, dst_as. Lines go out once a second and when the worker leaves.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import sys
import time
from collections import OrderedDict
from typing import List, Optional, Tuple

import numpy as np

log = logging.getLogger("netflow_v5")

HEADER = np.dtype([("version", ">u2"), ("count", ">u2"), ("uptime", ">u4"),
                   ("unix_secs", ">u4"), ("unix_nsecs", ">u4"), ("sequence", ">u4"),
                   ("engine_type", "u1"), ("engine_id", "u1"), ("sampling", ">u2")])
RECORD = np.dtype([("src", ">u4"), ("dst", ">u4"), ("nexthop", ">u4"), ("input", ">u2"),
                   ("output", ">u2"), ("packets", ">u4"), ("bytes", ">u4"), ("first", ">u4"),
                   ("last", ">u4"), ("sport", ">u2"), ("dport", ">u2"), ("pad1", "u1"),
                   ("tcp_flags", "u1"), ("proto", "u1"), ("tos", "u1"), ("src_as", ">u2"),
                   ("dst_as", ">u2"), ("src_mask", "u1"), ("dst_mask", "u1"), ("pad2", ">u2")])
assert HEADER.itemsize == 24 and RECORD.itemsize == 48
MAX_EXPORTERS = 10_000  # (address, engine type, engine id) whose sequence is followed
HALF = 1 << 31          # serial number arithmetic: a gap past half the range goes back


def decode(batch) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(each datagram's header, the records of the valid ones, the index of
    each record's datagram in the batch, which datagrams are valid)."""
    lengths = batch.lengths.astype(np.int64)
    offsets = batch.offsets.astype(np.int64)
    arena = batch.payload
    whole = lengths >= HEADER.itemsize
    head = np.zeros(len(lengths), dtype=HEADER)
    if whole.any():
        rows = arena[offsets[whole, None] + np.arange(HEADER.itemsize)]
        head[whole] = rows.view(HEADER).ravel()
    counts = head["count"].astype(np.int64)
    valid = whole & (head["version"] == 5) & (lengths == HEADER.itemsize + RECORD.itemsize * counts)
    counts = np.where(valid, counts, 0)
    owner = np.repeat(np.arange(len(lengths)), counts)          # datagram of each record
    nth = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    starts = offsets[owner] + HEADER.itemsize + RECORD.itemsize * nth
    records = arena[starts[:, None] + np.arange(RECORD.itemsize)].view(RECORD).ravel()
    return head, records, owner, valid


# A flow time this far past the export time is an exporter's clock slip,
# not a 49-day-old flow (as nfdump reads it: Cisco bug CSCei12353).
FUTURE_MS = 100_000


def _age(uptime: np.ndarray, at: np.ndarray) -> np.ndarray:
    """ms from a flow time `at` to the export, both on the exporter's
    wrapping 32-bit uptime clock."""
    age = (uptime - at.astype(np.int64)) & 0xFFFFFFFF
    return np.where(age > (1 << 32) - FUTURE_MS, age - (1 << 32), age)


class Collector:
    def __init__(self, out: Optional[str], interval: float = 1.0) -> None:
        self.fd = (os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                   if out else sys.stdout.fileno())
        self.interval = interval
        self.lines: List[str] = []
        self.last = time.monotonic()
        # exporter -> the sequence expected next, least recently heard first
        self.next_sequence: "OrderedDict[Tuple[str, int, int], int]" = OrderedDict()
        self.invalid = self.lost = self.backwards = self.forgotten = 0

    def add(self, batch) -> None:
        head, records, owner, valid = decode(batch)
        self.invalid += int(np.count_nonzero(~valid))
        exporters = [packet.src[0] for packet in batch]  # one address per datagram
        self._sequence(exporters, head, valid)
        # Absolute times: the exporter's clock at export minus each time's
        # age. Uptime and flow times are 32-bit ms counters that wrap every
        # 49.7 days (and softflowd -r exports an uptime of 0), so an age is
        # their difference modulo 2**32.
        exported_ms = head["unix_secs"].astype(np.int64) * 1000 + head["unix_nsecs"] // 1_000_000
        exported_ms, uptime = exported_ms[owner], head["uptime"].astype(np.int64)[owner]
        columns = {
            "src": records["src"].tolist(), "dst": records["dst"].tolist(),
            "sport": records["sport"].tolist(), "dport": records["dport"].tolist(),
            "proto": records["proto"].tolist(), "packets": records["packets"].tolist(),
            "bytes": records["bytes"].tolist(),
            "first": (exported_ms - _age(uptime, records["first"])).tolist(),
            "last": (exported_ms - _age(uptime, records["last"])).tolist(),
            "tcp_flags": records["tcp_flags"].tolist(), "tos": records["tos"].tolist(),
            "input": records["input"].tolist(), "output": records["output"].tolist(),
            "nexthop": records["nexthop"].tolist(),
            "src_as": records["src_as"].tolist(), "dst_as": records["dst_as"].tolist(),
        }
        for i, row in enumerate(zip(*columns.values())):
            flow = dict(zip(columns, row), exporter=exporters[owner[i]])
            for field in ("src", "dst", "nexthop"):
                flow[field] = str(ipaddress.IPv4Address(flow[field]))
            self.lines.append(json.dumps(flow) + "\n")
        if time.monotonic() - self.last >= self.interval:
            self.flush()

    def _sequence(self, exporters: List[str], head: np.ndarray, valid: np.ndarray) -> None:
        """Count flows lost between valid datagrams: each header carries the
        sequence number of its first flow."""
        for i in np.flatnonzero(valid):
            exporter = (exporters[i], int(head["engine_type"][i]), int(head["engine_id"][i]))
            expected = self.next_sequence.pop(exporter, None)
            sequence = int(head["sequence"][i])
            if expected is not None and sequence != expected:
                gap = (sequence - expected) % (1 << 32)
                if gap < HALF:
                    self.lost += gap
                else:
                    self.backwards += 1
            self.next_sequence[exporter] = (sequence + int(head["count"][i])) % (1 << 32)
            if len(self.next_sequence) > MAX_EXPORTERS:
                self.next_sequence.popitem(last=False)
                self.forgotten += 1

    def flush(self) -> None:
        data = "".join(self.lines).encode()
        self.lines.clear()
        self.last = time.monotonic()
        while data:
            data = data[os.write(self.fd, data):]


collector: Optional[Collector] = None


def worker_start() -> None:
    global collector
    collector = Collector(os.environ.get("NETFLOW_OUT"))


def on_batch(batch) -> None:
    assert collector is not None
    collector.add(batch)


def worker_stop() -> None:
    if collector is not None:
        collector.flush()
        c = collector
        if c.invalid or c.lost or c.backwards or c.forgotten:
            log.warning("%d datagrams were not NetFlow v5; %d flows lost on the way; %d "
                        "datagrams went back in an exporter's sequence; %d exporters "
                        "forgotten (more than %d)", c.invalid, c.lost, c.backwards,
                        c.forgotten, MAX_EXPORTERS)


def main() -> None:
    import signal

    import udp_reader

    worker_start()
    address = sys.argv[1] if len(sys.argv) > 1 else ":2055"
    with udp_reader.Reader(address) as reader:
        signal.signal(signal.SIGTERM, lambda *_: reader.stop())
        try:
            reader.run_batches(on_batch)  # until Ctrl-C or TERM
        except KeyboardInterrupt:
            pass
        reader.drain(on_batch=on_batch)  # what is queued still counts
    worker_stop()


if __name__ == "__main__":
    main()
