"""Scaling on the two cores: two reader processes against one.

One process drains one queue of COUNT datagrams; then two processes each
drain a queue of COUNT / 2 at once. Both runs start from filled queues and
a started process, and the clock runs from "go" to the last "done". The
plain C loop runs the same way: it shows what the machine itself allows."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from conftest import record
from udp_reader import Reader
from udp_reader.cli.bench import Queue

COUNT = 400_000


def _c_worker(drain, fd: int, count: int, go, done) -> None:
    go.recv()
    drain(fd, count, 64)
    done.send(True)


def _worker(fd: int, count: int, go, done) -> None:
    with Reader(fileno=fd) as reader:
        left = count

        def on_packet(packet):
            nonlocal left
            left -= 1
            if not left:
                reader.stop()

        go.recv()
        reader.run(on_packet)
    done.send(True)


@pytest.mark.parametrize("engine", ["per_packet", "c_loop"])
@pytest.mark.parametrize("contender", ["one", "two"])
def test_workers(contender, engine, benchmark, c_loop):
    benchmark.group = f"workers {engine}"
    processes = 1 if contender == "one" else 2
    context = multiprocessing.get_context("fork")
    runs = []

    def setup():
        queues = [Queue(COUNT // processes, 64) for _ in range(processes)]
        links = []
        for q in queues:
            q.fill()
            go_here, go_there = context.Pipe()
            done_here, done_there = context.Pipe()
            fd = os.dup(q.sock.fileno())
            if engine == "c_loop":
                target, args = _c_worker, (c_loop.drain, fd, q.count, go_there, done_there)
            else:
                target, args = _worker, (fd, q.count, go_there, done_there)
            proc = context.Process(target=target, args=args)
            proc.start()
            links.append((proc, go_here, done_here))
        runs.append((queues, links))
        return (), {}

    def run():
        queues, links = runs[-1]
        for _, go, _ in links:
            go.send(True)
        for _, _, done in links:
            done.recv()

    benchmark.pedantic(run, setup=setup, rounds=5)
    for queues, links in runs:
        for proc, _, _ in links:
            proc.join(10)
        for q in queues:
            q.close()
    record(benchmark.group, contender, benchmark.stats.stats.median)
    benchmark.extra_info["packets_per_second"] = COUNT / benchmark.stats.stats.median
