"""Shared pieces of the benchmark suite, and the ratio report.

Throughput is measured fill-then-drain (see udp_reader.cli.bench): every
round queues the same datagrams on one loopback socket first, then times
only a contender emptying the queue. Each benchmark records its median in
one table; at the end of the run the ratios are printed against the targets
and written to the results file (resultsfile.py).
"""

from __future__ import annotations

import ctypes
import dataclasses
import pathlib
import shlex
import subprocess
import tempfile
from typing import Dict, List, Optional, Tuple

import pytest

import resultsfile
from udp_reader.cli.bench import Queue

HERE = pathlib.Path(__file__).parent

# (group, contender) -> median: seconds for drains and latencies, bytes for memory.
RESULTS: Dict[Tuple[str, str], float] = {}

# (group prefix, contender, compared with, how, target). "faster": the time of
# the second over the time of the first, at least target; "slower": the
# first's over the second's, at most target; "under": the value itself.
TARGETS = [
    ("drain", "per_batch", "c_loop", "faster", 0.9),
    ("drain", "per_packet", "c_loop", "faster", 0.75),
    ("drain", "per_packet", "py_recvfrom", "faster", 1.8),
    ("drain", "per_packet", "uvloop", "faster", 1.8),
    ("drain", "per_packet", "asyncio", "faster", 10),
    ("drain", "c_loop", "asyncio", "faster", 10),  # what the kernel allows
    # What ip_fields=True (two control messages more per datagram) costs.
    ("drain", "per_batch_ip", "per_batch", "faster", 0.9),
    ("drain", "per_packet_ip", "per_packet", "faster", 0.9),
    # Datagrams to a group joined on lo (in a namespace of its own).
    ("multicast", "per_batch", "c_loop", "faster", 0.9),
    ("multicast", "per_batch", "per_batch_unicast", "faster", 0.9),
    ("gro", "per_batch", "c_loop", "faster", 0.5),
    ("workers", "two", "one", "faster", 1.6),
    ("memory", "growth", None, "under", 1 << 20),
    ("latency", "per_packet", "py_recvfrom", "slower", 1.2),
    ("echo", "per_batch", "c_echo", "faster", 0.8),
    ("echo", "per_packet", "uvloop", "faster", 2),
    ("echo", "c_echo", "uvloop", "faster", 2),  # what the kernel allows
    # CPU to capture a port to pcap; tcpdump reads an mmap ring in C.
    ("watch", "watch", "tcpdump", "slower", 20),
    # Flows decoded per CPU second: the collector writing FLOW records (npy),
    # and beside it writing JSON lines, held above the 0.03x of a dict per flow.
    ("netflow", "collector", "nfcapd", "faster", 0.5),
    ("netflow", "collector_json", "nfcapd", "faster", 0.05),
]


def pytest_addoption(parser):
    parser.addoption("--soak-seconds", type=float, default=0,
                     help="run the soak benchmark this long (it is skipped otherwise)")
    parser.addoption("--echo-count", type=int, default=100_000,
                     help="requests per round of the echo benchmark (default 100000)")
    parser.addoption("--watch-count", type=int, default=200_000,
                     help="datagrams per round of the watch-against-tcpdump benchmark")
    parser.addoption("--chaos-seconds", type=float, default=180,
                     help="how long the chaos benchmark runs (default 180)")


@pytest.fixture(scope="session")
def c_loop():
    """drain(fd, count, batch) and drain_gro(fd, segments, batch) from
    bench/c_loop.c, compiled for this run."""
    out = pathlib.Path(tempfile.mkdtemp()) / "c_loop.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(out),
                    str(HERE / "c_loop.c")], check=True)
    lib = ctypes.CDLL(str(out))
    for fn in (lib.drain, lib.drain_gro):
        fn.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_int]
        fn.restype = ctypes.c_long
    return lib


@pytest.fixture
def measure(benchmark, request):
    """Time `prepare(queue)()` over freshly filled queues; record the median."""

    def run(queue: Queue, prepare, rounds: int = 7) -> None:
        drains = []

        def setup():
            queue.fill()
            drains.append(prepare(queue))
            return (), {}

        benchmark.pedantic(lambda: drains.pop()(), setup=setup, rounds=rounds)
        record(benchmark.group, request.node.callspec.params["contender"],
               benchmark.stats.stats.median)
        benchmark.extra_info["packets_per_second"] = queue.count / benchmark.stats.stats.median

    return run


def record(group: str, contender: str, value: float) -> None:
    RESULTS[(group, contender)] = value


@dataclasses.dataclass(frozen=True)
class Ratio:
    """One target checked: `contender` against `compared` in `group`."""

    group: str
    contender: str
    compared: Optional[str]
    how: str
    value: float
    target: float

    @property
    def sign(self) -> str:
        return {"faster": ">=", "slower": "<="}.get(self.how, "<")

    @property
    def ok(self) -> bool:
        if self.how == "faster":
            return self.value >= self.target
        if self.how == "slower":
            return self.value <= self.target
        return self.value < self.target

    @property
    def verdict(self) -> str:
        return "ok" if self.ok else "MISSED"

    @property
    def shown(self) -> str:
        return f"{self.value:,.0f}" if self.how == "under" else f"{self.value:.2f}"


def ratios() -> List[Ratio]:
    """Every target whose contenders this run measured, group by group."""
    found = []
    for group in sorted({g for g, _ in RESULTS}):
        row = {c: v for (g, c), v in RESULTS.items() if g == group}
        for prefix, a, b, how, target in TARGETS:
            if not group.startswith(prefix) or a not in row or (b and b not in row):
                continue
            if how == "faster":
                value = row[b] / row[a]
            elif how == "slower":
                value = row[a] / row[b]
            else:
                value = row[a]
            found.append(Ratio(group, a, b, how, value, target))
    return found


def pytest_terminal_summary(terminalreporter, config):
    if not RESULTS:
        return
    found = ratios()
    tr = terminalreporter
    tr.section("udp-reader targets (ratios of medians)")
    for r in found:
        if r.how == "faster":
            text = f"{r.contender} vs {r.compared}: {r.value:5.2f}x"
        elif r.how == "slower":
            text = f"{r.contender} / {r.compared}: {r.value:5.2f}x"
        else:
            text = f"{r.contender}: {r.value:,.0f}"
        tr.write_line(f"{r.group:16} {text:34} (target {r.sign} {r.target:,}) {r.verdict}")
    if not found:
        return
    run = resultsfile.Run(resultsfile.now(), resultsfile.machine(),
                          "python -m pytest " + shlex.join(config.invocation_params.args))
    resultsfile.merge([resultsfile.Row(" ".join(r.group.split()), r.contender, r.compared or "",
                                       r.shown, f"{r.sign} {r.target:,}", r.verdict, run.measured)
                       for r in found], run)
    tr.write_line(f"written to {resultsfile.PATH.relative_to(HERE.parent)}")
