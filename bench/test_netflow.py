"""NetFlow v9 and IPFIX decoding: the collector of examples/netflow_v9.py
against nfcapd, on the same real softflowd export datagrams. Each empties
a filled queue of them and writes what it decoded to a file of its own:
the collector as FLOW records (NETFLOW_FORMAT=npy, the contender of the
target, binary as nfcapd's files are) and as JSON lines beside it. The
report is CPU seconds per flow decoded, by each contender's own count of
flows (nfcapd says its count when it stops), median of ROUNDS rounds, the
contenders taking turns so that a change in the machine's load falls on
all of them. NETFLOW_DATAGRAMS sets how many datagrams a round queues
(about 32 flows each)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import pytest

from conftest import HERE, record
from udp_reader import Reader, sockets

sys.path.insert(0, str(HERE.parent / "examples"))
import netflow_v9  # noqa: E402

DATAGRAMS = int(os.environ.get("NETFLOW_DATAGRAMS", 20_000))
ROUNDS = 3
FLOWS = 10_000  # in the pcap softflowd exports: about 313 datagrams, repeated
CHUNK = 1_000  # datagrams queued on nfcapd's socket at a time (its buffer is rmem_max)


def export(version: str) -> List[bytes]:
    """softflowd's export of FLOWS one-packet UDP flows, recorded by a socket."""
    folder = tempfile.mkdtemp()
    try:
        pcap = os.path.join(folder, "flows.pcap")
        with open(pcap, "wb") as f:
            f.write(struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
            for i in range(FLOWS):
                udp = struct.pack("!HHHH", 1024 + i % 60000, 53, 28, 0) + b"x" * 20
                ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                                 bytes([10, 1, i >> 8 & 255, i & 255]), bytes([10, 2, 0, 1]))
                frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp
                f.write(struct.pack("=IIII", 1_700_000_000 + i // 1000, 0, len(frame),
                                    len(frame)) + frame)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as recorder:
            recorder.bind(("127.0.0.1", 0))
            sockets.set_rcvbuf(recorder, 64 << 20)
            subprocess.run(["softflowd", "-r", pcap, "-d", "-a", "-v", version,
                            "-n", f"127.0.0.1:{recorder.getsockname()[1]}"],
                           check=True, capture_output=True, timeout=60)
            recorder.setblocking(False)
            datagrams = []
            while True:
                try:
                    datagrams.append(recorder.recv(65535))
                except BlockingIOError:
                    return datagrams
    finally:
        shutil.rmtree(folder)


def fill(sock: socket.socket, address, datagrams: List[bytes], count: int) -> None:
    """Queue `count` datagrams, the export over and over (templates first)."""
    drops = sockets.kernel_drops(sock)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as exporter:
        for i in range(count):
            exporter.sendto(datagrams[i % len(datagrams)], address)
    if sockets.kernel_drops(sock) != drops:
        raise RuntimeError("the queue overflowed while filling: fewer datagrams, please")


def collector_round(datagrams: List[bytes], format: str) -> float:
    """CPU seconds per flow of one collector draining a filled queue."""
    folder = tempfile.mkdtemp()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sockets.set_rcvbuf(sock, 512 << 20)
            fill(sock, sock.getsockname(), datagrams, DATAGRAMS)
            collector = netflow_v9.Collector(os.path.join(folder, "flows"), netflow_v9.Templates(),
                                             format=format)
            reader = Reader.from_socket(sock)
            left = DATAGRAMS

            def on_batch(batch) -> None:
                nonlocal left
                collector.add(batch)
                left -= len(batch)
                if not left:
                    reader.stop()

            start = time.process_time()
            reader.run_batches(on_batch)
            collector.flush()
            seconds = time.process_time() - start
    finally:
        shutil.rmtree(folder)
    assert not collector.unknown and not collector.malformed
    return seconds / collector.flows


def cpu_seconds(pid: int) -> float:
    """CPU time of all of pid's threads, to the nanosecond (schedstat, not
    the 10 ms ticks of /proc/pid/stat)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def queued(port: int) -> int:
    """Bytes queued on the socket bound to 127.0.0.1:port (/proc/net/udp)."""
    with open("/proc/net/udp") as f:
        for row in (line.split() for line in f.readlines()[1:]):
            if row[1] == f"0100007F:{port:04X}":
                if int(row[-1]):
                    raise RuntimeError("nfcapd's queue overflowed: a smaller CHUNK, please")
                return int(row[4].split(":")[1], 16)
    raise LookupError(f"nothing bound to port {port}")


def nfcapd_round(datagrams: List[bytes]) -> float:
    """CPU seconds per flow of nfcapd emptying its queue, CHUNK datagrams at
    a time queued while it is stopped, by the count of flows it reports."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tempfile.mkdtemp()
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    nfcapd = subprocess.Popen(["nfcapd", "-b", "127.0.0.1", "-p", str(port), "-w", folder,
                               "-B", str(4 << 20)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env)
    try:
        while True:
            try:
                queued(port)
                break
            except LookupError:
                time.sleep(0.01)
        cpu = 0.0
        for start in range(0, DATAGRAMS, CHUNK):
            nfcapd.send_signal(signal.SIGSTOP)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as exporter:
                for i in range(start, min(start + CHUNK, DATAGRAMS)):
                    exporter.sendto(datagrams[i % len(datagrams)], ("127.0.0.1", port))
            before = cpu_seconds(nfcapd.pid)
            nfcapd.send_signal(signal.SIGCONT)
            while queued(port):
                time.sleep(0.001)
            cpu += cpu_seconds(nfcapd.pid) - before
    finally:
        nfcapd.send_signal(signal.SIGCONT)
        nfcapd.send_signal(signal.SIGTERM)
        out, _ = nfcapd.communicate(timeout=60)
        shutil.rmtree(folder)
    flows = sum(int(n) for n in re.findall(r"Flows: (\d+)", out))
    assert flows > 0, out
    return cpu / flows


@pytest.mark.skipif(shutil.which("softflowd") is None or shutil.which("nfcapd") is None,
                    reason="needs softflowd and nfcapd")
@pytest.mark.parametrize("version", ["9", "10"])
def test_netflow(version):
    datagrams = export(version)  # the same for every contender
    contenders = {"collector": lambda: collector_round(datagrams, "npy"),
                  "collector_json": lambda: collector_round(datagrams, "json"),
                  "nfcapd": lambda: nfcapd_round(datagrams)}
    rounds: Dict[str, List[float]] = {name: [] for name in contenders}
    for _ in range(ROUNDS):
        for name, round_ in contenders.items():
            rounds[name].append(round_())
    for name, seconds in rounds.items():
        median = statistics.median(seconds)
        record(f"netflow {'v9' if version == '9' else 'ipfix'}", name, median)
        print(f"{name:14} v{version}: {1 / median:12,.0f} flows per CPU second")
