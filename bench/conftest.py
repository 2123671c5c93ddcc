"""Fill-then-drain throughput harness shared by the benchmarks.

Every round queues the same datagrams on one loopback socket first, then
times only a contender emptying the queue, so the figure is the reader's own
cost and not the sender's. Ratios of medians against the targets are
printed at the end of the run.
"""

from __future__ import annotations

import ctypes
import pathlib
import subprocess
import tempfile

import pytest

from udp_reader.benchmark import Queue

HERE = pathlib.Path(__file__).parent


@pytest.fixture(scope="session")
def c_loop():
    """drain(fd, count, batch) from bench/c_loop.c, compiled for this run."""
    out = pathlib.Path(tempfile.mkdtemp()) / "c_loop.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(out),
                    str(HERE / "c_loop.c")], check=True)
    lib = ctypes.CDLL(str(out))
    lib.drain.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_int]
    lib.drain.restype = ctypes.c_long
    return lib.drain


_medians: dict[tuple[str, str], float] = {}


@pytest.fixture
def measure(benchmark, request):
    """Run `drain(queue)` over freshly filled queues and record its median."""

    def run(queue: Queue, prepare, rounds: int = 7) -> None:
        """`prepare(queue)` returns the drain to time, after the queue is filled."""
        drains = []

        def setup():
            queue.fill()
            drains.append(prepare(queue))
            return (), {}

        benchmark.pedantic(lambda: drains.pop()(), setup=setup, rounds=rounds)
        group = benchmark.group or ""
        contender = request.node.callspec.params.get("contender", request.node.name)
        _medians[(group, contender)] = benchmark.stats.stats.median
        benchmark.extra_info["packets_per_second"] = queue.count / benchmark.stats.stats.median

    return run


# (group prefix, contender, compared with, target ratio of speeds)
TARGETS = [
    ("drain", "per_batch", "c_loop", 0.9),
    ("drain", "per_packet", "c_loop", 0.75),
    ("drain", "per_packet", "py_recvfrom", 1.8),
    ("drain", "per_packet", "uvloop", 1.8),
    ("drain", "per_packet", "asyncio", 10),
]


def pytest_terminal_summary(terminalreporter):
    if not _medians:
        return
    tr = terminalreporter
    tr.section("udp-reader ratios (speed, from medians)")
    groups = sorted({g for g, _ in _medians})
    for group in groups:
        row = {c: m for (g, c), m in _medians.items() if g == group}
        for prefix, a, b, target in TARGETS:
            if group.startswith(prefix) and a in row and b in row:
                ratio = row[b] / row[a]
                verdict = "ok" if ratio >= target else "MISSED"
                tr.write_line(f"{group:24} {a} / {b} = {ratio:5.2f}  (target >= {target}) {verdict}")
        for contender, median in sorted(row.items()):
            tr.write_line(f"{group:24} {contender:14} median {median * 1e3:8.2f} ms")
