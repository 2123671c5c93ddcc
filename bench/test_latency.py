"""Wake-up latency of a single packet: a Reader per packet against a
blocking Python recvfrom, both in a process of their own, idle when each
ping is sent. Latency is the receive-side clock minus the send time carried
in the payload (CLOCK_MONOTONIC is one clock for every process)."""

from __future__ import annotations

import multiprocessing
import socket
import statistics
import time

import pytest

from conftest import record
from udp_reader import Reader

PINGS = 300
GAP = 0.002  # seconds between pings: each finds the receiver waiting


def _reader(sock: socket.socket, out) -> None:
    latencies = []
    with Reader.from_socket(sock) as reader:
        def on_packet(packet):
            latencies.append(time.perf_counter_ns() - int.from_bytes(packet.data[:8], "little"))
            if len(latencies) == PINGS:
                reader.stop()
        out.send("ready")
        reader.run(on_packet)
    out.send(latencies)


def _recvfrom(sock: socket.socket, out) -> None:
    latencies = []
    out.send("ready")
    for _ in range(PINGS):
        data, _ = sock.recvfrom(64)
        latencies.append(time.perf_counter_ns() - int.from_bytes(data[:8], "little"))
    out.send(latencies)


@pytest.mark.parametrize("contender", ["py_recvfrom", "per_packet"])
def test_single_packet_latency(contender, benchmark):
    benchmark.group = "latency"
    context = multiprocessing.get_context("fork")
    result = {}

    def run():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sock.bind(("127.0.0.1", 0))
            here, there = context.Pipe()
            target = _reader if contender == "per_packet" else _recvfrom
            proc = context.Process(target=target, args=(sock, there))
            proc.start()
            assert here.recv() == "ready"
            time.sleep(0.1)
            for _ in range(PINGS):
                sender.sendto(time.perf_counter_ns().to_bytes(8, "little"), sock.getsockname())
                time.sleep(GAP)
            result["latencies"] = here.recv()
            proc.join(10)

    benchmark.pedantic(run, rounds=1)
    median = statistics.median(result["latencies"]) / 1e9
    record("latency", contender, median)
    benchmark.extra_info["median_latency_us"] = median * 1e6
    print(f"\n{contender}: median wake-up latency {median * 1e6:.1f} us")
