"""The StatsD aggregator keeps its open interval across restarts: the real
`statsd` client sends counter increments while the server is restarted
(10 HUPs and a USR2); the sum of every flushed counter is what was sent, and
no interval of a slot is flushed twice (none overlaps another)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import statsd

from harness import settled
from server import Server

SENT = 20000  # increments, one datagram each


def sender(port: int, done: threading.Event) -> None:
    client = statsd.StatsClient("127.0.0.1", port)
    for i in range(SENT):
        client.incr("hits")
        if i % 200 == 199:
            time.sleep(0.05)  # paced over the restarts; the queue never overflows
    done.set()


@pytest.mark.parametrize("workers", [1, 2])
def test_counts_are_exact_across_hups_and_an_upgrade(tmp_path, workers):
    out = str(tmp_path / "stats.jsonl")
    made = tmp_path / "tmp"  # where the master makes its state directory
    made.mkdir()
    server = Server("statsd_aggregator:on_batch", "--batches", "--workers", str(workers),
                    record_dir=str(tmp_path),
                    env={"STATSD_OUT": out, "STATSD_FLUSH": "1", "TMPDIR": str(made)})
    done = threading.Event()
    try:
        server.status(settled(workers))
        threading.Thread(target=sender, args=(server.port, done), daemon=True).start()
        for restarts in range(1, 11):
            server.master.send_signal(signal.SIGHUP)
            server.status(settled(workers, restarts=restarts))
        server.upgrade()
        server.status(settled(workers))
        assert done.wait(60)
        # Everything sent was received: the master's count goes on across USR2.
        snap = server.status(lambda s: sum(x["totals"].get("received", 0)
                                           for x in s["slots"]) == SENT)
        assert snap["kernel_drops"] == 0
        # One state directory, private, carried across the upgrade ...
        [state_dir] = os.listdir(made)
        assert os.stat(made / state_dir).st_mode & 0o777 == 0o700
    finally:
        server.stop()
    assert os.listdir(made) == []  # ... and removed at the final stop
    with open(out) as f:
        lines = [json.loads(line) for line in f]
    assert sum(line["counters"].get("hits", 0) for line in lines) == SENT
    for slot in {line["slot"] for line in lines}:
        spans = sorted((line["time"] - line["interval"], line["time"])
                       for line in lines if line["slot"] == slot)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end - 0.01, f"slot {slot}: intervals overlap: {spans}"
