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

Under serve, the open interval survives a restart (HUP, USR2,
--max-packets): the worker leaving hands its partial aggregates and gauges
on (save_state(final=True)) instead of flushing them, and the next worker
adds them to its own and flushes at the interval's end, so no interval is
flushed twice or lost. A checkpoint (final=False) carries the gauges only:
after a crash the next worker keeps the gauges, and the dead worker's
unflushed interval is lost rather than risk flushing part of it twice.
Counts never merge between slots: each slot flushes its own.

A sender cannot make it grow without bound or write what is not JSON: a
name longer than MAX_NAME bytes, a value that is not a finite number of at
most MAX_VALUE, a rate outside [MIN_RATE, 1] or a line that is not StatsD is
refused alone (the rest of its datagram counts), and so is a new name once
a table (counters, timers, gauges) holds STATSD_MAX_NAMES (10,000) of them.
Each interval's line says what it refused ("refused"), and a warning is
logged.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import numpy as np

log = logging.getLogger("statsd_aggregator")

MAX_NAME = 128              # bytes
MAX_VALUE = float(2 ** 53)  # sums of a billion of them stay finite
MIN_RATE = 1e-6
MAX_NAMES = int(os.environ.get("STATSD_MAX_NAMES", "10000"))  # per table
CHUNK = 256 * 1024          # bytes parsed at once: bounds a batch's parsing memory
# name:value|type[|@rate][|#tags], one per line, several lines per datagram.
METRIC = re.compile(rb"^([^:\n|]{1,%d}):([-+]?[0-9][0-9.eE+-]{0,31})\|(c|ms|h|g)"
                    rb"(?:\|@([0-9.eE+-]{1,32}))?(?:\|[^\n]*)?$" % MAX_NAME, re.M)
NEWLINE = ord("\n")
REFUSALS = ("malformed", "bad_value", "too_many_names")


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


def lines_in(blob: bytes) -> int:
    """How many non-empty lines `blob` holds."""
    ends = np.flatnonzero(np.frombuffer(blob, dtype=np.uint8) == NEWLINE)
    return int(np.count_nonzero(np.diff(ends, prepend=-1) > 1)) + \
        (1 if blob and blob[-1] != NEWLINE else 0)


def chunks(blob: bytes):
    """`blob` in pieces of about CHUNK bytes, each cut after a newline."""
    start = 0
    while start < len(blob):
        end = (len(blob) if len(blob) - start <= CHUNK
               else blob.rfind(b"\n", start, start + CHUNK) + 1)
        if end <= start:  # a line longer than CHUNK: gather() never makes one
            end = blob.find(b"\n", start + CHUNK) + 1 or len(blob)
        yield blob[start:end]
        start = end


def floats(column: np.ndarray) -> np.ndarray:
    """Bytes to float64, NaN for what is not a number (1.2.3), without
    failing the whole column."""
    try:
        return column.astype(np.float64)
    except ValueError:
        out = np.empty(len(column))
        for i, text in enumerate(column.tolist()):
            try:
                out[i] = float(text)
            except ValueError:
                out[i] = np.nan
        return out


class Aggregate:
    """One interval's metrics. add() takes parsed columns; report() reduces."""

    def __init__(self, gauges: Dict[str, float]) -> None:
        self.counters: Dict[str, float] = {}
        self.timer_seen: set = set()
        self.timer_names: List[np.ndarray] = []
        self.timer_values: List[np.ndarray] = []
        self.timer_weights: List[np.ndarray] = []
        self.gauges = gauges  # carried over from interval to interval
        self.refused = dict.fromkeys(REFUSALS, 0)
        self.started = time.time()

    def add(self, found: List[tuple], lines: int) -> None:
        """Metrics as METRIC.findall() gives them (name, value, type, rate),
        out of `lines` non-empty lines."""
        self.refused["malformed"] += lines - len(found)
        if not found:
            return
        names, values, kinds, rates = (np.array(column) for column in zip(*found))
        numbers = floats(values)
        rate = floats(np.where(rates == b"", b"1", rates))
        good = (np.isfinite(numbers) & (np.abs(numbers) <= MAX_VALUE)
                & (rate >= MIN_RATE) & (rate <= 1))
        self.refused["bad_value"] += int(np.count_nonzero(~good))
        weights = 1.0 / np.where(good, rate, 1.0)
        counter = good & (kinds == b"c")
        if counter.any():
            unique, inverse = np.unique(names[counter], return_inverse=True)
            sums = np.bincount(inverse.ravel(), weights=numbers[counter] * weights[counter])
            lines_of = np.bincount(inverse.ravel())
            for name, total, n in zip(unique.tolist(), sums.tolist(), lines_of.tolist()):
                key = name.decode(errors="replace")
                if self._admit(key, self.counters, n):
                    self.counters[key] = self.counters.get(key, 0.0) + total
        timer = good & ((kinds == b"ms") | (kinds == b"h"))
        if timer.any():
            unique, inverse = np.unique(names[timer], return_inverse=True)
            admitted = np.array([self._admit(name, self.timer_seen, n) for name, n in
                                 zip(unique.tolist(), np.bincount(inverse.ravel()).tolist())])
            for name in unique[admitted].tolist():
                self.timer_seen.add(name)
            keep = admitted[inverse.ravel()]
            self.timer_names.append(names[timer][keep])
            self.timer_values.append(numbers[timer][keep])
            self.timer_weights.append(weights[timer][keep])
        for i in np.flatnonzero(good & (kinds == b"g")):  # in order: "+3", "-2" change the last
            key = names[i].decode(errors="replace")
            if self._admit(key, self.gauges, 1):
                relative = values[i][:1] in (b"+", b"-")
                value = (self.gauges.get(key, 0.0) if relative else 0.0) + numbers[i]
                self.gauges[key] = float(max(-MAX_VALUE, min(MAX_VALUE, value)))

    def _admit(self, name: Any, table: Any, lines: int) -> bool:
        """Whether `name` may be in `table`: already there, or room left."""
        if name in table or len(table) < MAX_NAMES:
            return True
        self.refused["too_many_names"] += lines
        return False

    def timers(self) -> Dict[str, Dict[str, float]]:
        if not self.timer_names:
            return {}
        names = np.concatenate(self.timer_names)
        if not len(names):
            return {}
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

    def dump(self) -> Dict[str, Any]:
        """The interval as JSON-ready values; floats keep their exact value."""
        def column(parts: List[np.ndarray]) -> List[Any]:
            return np.concatenate(parts).tolist() if parts else []
        names = np.concatenate(self.timer_names) if self.timer_names else np.array([], "S1")
        return {"started": self.started, "counters": self.counters,
                "timers": [base64.b64encode(n).decode() for n in names.tolist()],
                "values": column(self.timer_values), "weights": column(self.timer_weights),
                "refused": self.refused}

    def take(self, dumped: Dict[str, Any]) -> None:
        """Add an interval another worker dumped to this one, which it began."""
        self.started = min(self.started, float(dumped["started"]))
        for name, total in dumped["counters"].items():
            self.counters[name] = self.counters.get(name, 0.0) + float(total)
        if dumped["timers"]:
            names = np.array([base64.b64decode(n) for n in dumped["timers"]])
            self.timer_seen.update(names.tolist())
            self.timer_names.append(names)
            self.timer_values.append(np.array(dumped["values"], dtype=np.float64))
            self.timer_weights.append(np.array(dumped["weights"], dtype=np.float64))
        for kind, n in dumped["refused"].items():
            self.refused[kind] = self.refused.get(kind, 0) + int(n)

    def report(self) -> Dict[str, Any]:
        now = time.time()
        return {"time": now, "interval": round(now - self.started, 3),
                "slot": os.environ.get("UDP_READER_SLOT"),
                "counters": self.counters, "timers": self.timers(), "gauges": self.gauges,
                "refused": {k: v for k, v in self.refused.items() if v}}


class Aggregator:
    """The current interval behind a lock; a thread flushes it when it ends,
    `interval` s after it began (a handed-on interval ends when it would have)."""

    def __init__(self, out: Optional[str], interval: float) -> None:
        self.fd = (os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                   if out else sys.stdout.fileno())
        self.current = Aggregate({})
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.moved = threading.Event()  # the interval's end moved (a restored one)
        self.interval = interval
        threading.Thread(target=self._every_interval, daemon=True).start()

    def _every_interval(self) -> None:
        while not self.done.is_set():
            self.moved.wait(max(0.0, self.current.started + self.interval - time.time()))
            self.moved.clear()
            if not self.done.is_set() and time.time() >= self.current.started + self.interval:
                self.flush()

    def flush(self) -> None:
        with self.lock:
            ended, self.current = self.current, Aggregate(self.current.gauges)
        report = ended.report()
        if report["refused"]:
            log.warning("refused %s StatsD line(s) in %g s (malformed, a bad value, or a new "
                        "name past %d per table): %s", sum(report["refused"].values()),
                        report["interval"], MAX_NAMES, report["refused"])
        if report["counters"] or report["timers"] or report["gauges"] or report["refused"]:
            # allow_nan=False: values are bounded above, so this never raises.
            os.write(self.fd, (json.dumps(report, allow_nan=False) + "\n").encode())


aggregator: Optional[Aggregator] = None
handed = False  # the open interval went to the next worker: never flushed here


def worker_start() -> None:
    global aggregator
    aggregator = Aggregator(os.environ.get("STATSD_OUT"),
                            float(os.environ.get("STATSD_FLUSH", "10")))


def on_batch(batch) -> None:
    assert aggregator is not None
    for blob in chunks(gather(batch)):
        found = METRIC.findall(blob)  # outside the lock: a flush never waits on it
        lines = lines_in(blob)
        with aggregator.lock:
            aggregator.current.add(found, lines)


def worker_stop() -> None:
    if aggregator is not None:
        aggregator.done.set()
        aggregator.moved.set()
        if not handed:
            aggregator.flush()


def save_state(final: bool) -> bytes:
    """The gauges; at a hand-over (final), the open interval too, which from
    then on is the next worker's alone: this one flushes no more."""
    global handed
    assert aggregator is not None
    with aggregator.lock:
        state: Dict[str, Any] = {"version": 1, "gauges": aggregator.current.gauges}
        if final:
            handed = True
            aggregator.done.set()
            state["interval"] = aggregator.current.dump()
            aggregator.current = Aggregate(aggregator.current.gauges)
        return json.dumps(state).encode()


def restore_state(data: bytes) -> None:
    """Take on the gauges, and the interval, of what save_state() gave."""
    global handed
    assert aggregator is not None
    state = json.loads(data)
    if not isinstance(state, dict) or state.get("version") != 1:
        raise ValueError("not a statsd_aggregator state of version 1")
    with aggregator.lock:
        for name, value in state["gauges"].items():
            aggregator.current.gauges.setdefault(name, float(value))
        if "interval" in state:
            aggregator.current.take(state["interval"])
    handed = False  # given back, when it could not be handed on: worker_stop() flushes it
    aggregator.moved.set()


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
