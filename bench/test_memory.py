"""Memory: resident size after 5 M packets against after 100 k, per packet
and keeping nothing. Growth would mean a leak per packet or per batch."""

from __future__ import annotations

import os

from conftest import record
from udp_reader import Reader
from udp_reader.cli.bench import Queue

CHUNK = 100_000
TOTAL = 5_000_000


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_resident_growth(benchmark):
    benchmark.group = "memory"
    queue = Queue(CHUNK, 64)
    sizes = {}

    def run():
        with Reader.from_socket(queue.sock) as reader:
            left = 0

            def on_packet(packet):
                nonlocal left
                packet.data, packet.src  # touch what a handler would
                left -= 1
                if not left:
                    reader.stop()

            for done in range(CHUNK, TOTAL + 1, CHUNK):
                queue.fill()
                left = CHUNK
                reader.run(on_packet)
                if done in (CHUNK, TOTAL):
                    sizes[done] = resident_bytes()

    try:
        benchmark.pedantic(run, rounds=1)
    finally:
        queue.close()
    growth = sizes[TOTAL] - sizes[CHUNK]
    benchmark.extra_info.update({"rss_after_100k": sizes[CHUNK], "rss_after_5m": sizes[TOTAL],
                                 "growth_bytes": growth})
    record("memory", "growth", growth)
    print(f"\nresident after 100 k: {sizes[CHUNK]:,} B, after 5 M: {sizes[TOTAL]:,} B, "
          f"growth {growth:,} B")
