"""A StatsD aggregator: counters, timers and gauges per flush interval,
worked out with numpy over whole batches.

Each batch's payloads are gathered into one buffer by numpy and parsed by
one regular expression pass; counters are summed with bincount and timers
reduced per name (count, sum, min, max, mean, 90th percentile) at the
flush. Counters and timers start again every interval; gauges keep their
last value, as StatsD does. One JSON line per interval.

    python examples/statsd_aggregator.py :8125                   # to stdout
    STATSD_OUT=stats.jsonl STATSD_FLUSH=10 PYTHONPATH=examples \\
        udp-reader serve statsd_aggregator:on_batch --bind :8125 --batches

Several workers each aggregate what they receive and write their own
lines (with the slot number): sum them per interval downstream.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import numpy as np

# name:value|type[|@rate][|#tags], one or more per datagram, newline apart.
METRIC = re.compile(rb"([^:\n|]+):([-+]?[0-9][0-9.eE+-]*)\|(c|ms|h|g)(?:\|@([0-9.]+))?[^\n]*")
NEWLINE = ord("\n")


def gather(batch) -> bytes:
    """Every payload of a batch, newline apart, as one bytes: a numpy gather
    from the receive arena, without a Python step per packet."""
    lengths = batch.lengths.astype(np.int64)
    total = int(lengths.sum())
    before = np.cumsum(lengths) - lengths          # payload bytes before each packet
    within = np.arange(total) - np.repeat(before, lengths)
    source = np.repeat(batch.offsets.astype(np.int64), lengths) + within
    target = np.repeat(before + np.arange(len(lengths)), lengths) + within  # +1 per newline
    blob = np.full(total + len(lengths), NEWLINE, dtype=np.uint8)
    blob[target] = batch.payload[source]
    return blob.tobytes()


class Aggregate:
    """One interval's metrics. add() takes parsed columns; report() reduces."""

    def __init__(self, gauges: Dict[str, float]) -> None:
        self.counters: Dict[str, float] = {}
        self.timer_names: List[np.ndarray] = []
        self.timer_values: List[np.ndarray] = []
        self.timer_weights: List[np.ndarray] = []
        self.gauges = gauges  # carried over from interval to interval
        self.started = time.time()

    def add(self, found: List[tuple]) -> None:
        """Metrics as METRIC.findall() gives them: (name, value, type, rate)."""
        if not found:
            return
        names, values, kinds, rates = (np.array(column) for column in zip(*found))
        numbers = values.astype(np.float64)
        weights = 1.0 / np.where(rates == b"", b"1", rates).astype(np.float64)
        counter = kinds == b"c"
        if counter.any():
            unique, inverse = np.unique(names[counter], return_inverse=True)
            sums = np.bincount(inverse.ravel(), weights=numbers[counter] * weights[counter])
            for name, total in zip(unique.tolist(), sums.tolist()):
                key = name.decode(errors="replace")
                self.counters[key] = self.counters.get(key, 0.0) + total
        timer = (kinds == b"ms") | (kinds == b"h")
        if timer.any():
            self.timer_names.append(names[timer])
            self.timer_values.append(numbers[timer])
            self.timer_weights.append(weights[timer])
        for i in np.flatnonzero(kinds == b"g"):  # in order: "+3" and "-2" change the last
            key = names[i].decode(errors="replace")
            relative = values[i][:1] in (b"+", b"-")
            self.gauges[key] = (self.gauges.get(key, 0.0) if relative else 0.0) + numbers[i]

    def timers(self) -> Dict[str, Dict[str, float]]:
        if not self.timer_names:
            return {}
        names = np.concatenate(self.timer_names)
        values = np.concatenate(self.timer_values)
        weights = np.concatenate(self.timer_weights)
        order = np.lexsort((values, names))         # by name, then value
        names, values, weights = names[order], values[order], weights[order]
        unique, starts, counts = np.unique(names, return_index=True, return_counts=True)
        sums = np.add.reduceat(values, starts)
        p90 = values[starts + np.ceil(0.9 * counts).astype(np.int64) - 1]
        return {name.decode(errors="replace"): {
                    "count": float(np.add.reduceat(weights, starts)[i]), "sum": float(sums[i]),
                    "min": float(values[starts[i]]),
                    "max": float(values[starts[i] + counts[i] - 1]),
                    "mean": float(sums[i] / counts[i]), "p90": float(p90[i])}
                for i, name in enumerate(unique.tolist())}

    def report(self) -> Dict[str, Any]:
        now = time.time()
        return {"time": now, "interval": round(now - self.started, 3),
                "slot": os.environ.get("UDP_READER_SLOT"),
                "counters": self.counters, "timers": self.timers(), "gauges": self.gauges}


class Aggregator:
    """The current interval behind a lock; a thread flushes it every `interval` s."""

    def __init__(self, out: Optional[str], interval: float) -> None:
        self.fd = (os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                   if out else sys.stdout.fileno())
        self.current = Aggregate({})
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.interval = interval
        threading.Thread(target=self._every_interval, daemon=True).start()

    def _every_interval(self) -> None:
        while not self.done.wait(self.interval):
            self.flush()

    def flush(self) -> None:
        with self.lock:
            ended, self.current = self.current, Aggregate(self.current.gauges)
        report = ended.report()
        if report["counters"] or report["timers"] or report["gauges"]:
            os.write(self.fd, (json.dumps(report) + "\n").encode())


aggregator: Optional[Aggregator] = None


def worker_start() -> None:
    global aggregator
    aggregator = Aggregator(os.environ.get("STATSD_OUT"),
                            float(os.environ.get("STATSD_FLUSH", "10")))


def on_batch(batch) -> None:
    found = METRIC.findall(gather(batch))  # outside the lock: a flush never waits on it
    assert aggregator is not None
    with aggregator.lock:
        aggregator.current.add(found)


def worker_stop() -> None:
    if aggregator is not None:
        aggregator.done.set()
        aggregator.flush()


def main() -> None:
    import signal

    import udp_reader

    worker_start()
    address = sys.argv[1] if len(sys.argv) > 1 else ":8125"
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
