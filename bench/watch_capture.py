"""`udp-reader watch --write` against `tcpdump -w`, each capturing the same
port to a pcap file while `udp-reader send` sends COUNT datagrams at RATE
from 8 ports to a socket bound there. Run under `unshare -n` (a private
loopback, so nothing else is captured):

    unshare -n python watch_capture.py COUNT RATE ROUNDS

Rounds interleave the contenders. A round measures the contender's CPU
seconds from ready (its filter in place) to its exit after COUNT packets,
and how many it wrote and the kernel dropped for it. Prints JSON: per
contender the median CPU seconds, the largest drop count, the records.
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile

PORT = 7777
DEADLINE = 120.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pcap_records(path: str) -> int:
    with open(path, "rb") as f:
        data = f.read()
    at, count = 24, 0
    while at + 16 <= len(data):
        at += 16 + struct.unpack_from("=I", data, at + 8)[0]
        count += 1
    return count


def command(name: str, path: str, count: int) -> list:
    if name == "watch":
        return [sys.executable, "-m", "udp_reader", "watch", f":{PORT}", "--write", path,
                "--count", str(count), "--status-interval", "0"]
    # Inbound only, as the watcher: loopback shows every datagram twice otherwise.
    return ["tcpdump", "-i", "any", "-Q", "in", "-nn", "-B", str(32 << 10), "-Z", "root",
            "-w", path, "-c", str(count), "udp", "dst", "port", str(PORT)]


def ready(proc: subprocess.Popen, name: str) -> None:
    """Wait for the line that says the capture is in place."""
    wanted = "watching" if name == "watch" else "listening on"
    seen = []
    while not seen or wanted not in seen[-1]:  # tcpdump names its link type first
        seen.append(proc.stderr.readline())
        if not seen[-1] or len(seen) > 5:
            proc.kill()
            raise RuntimeError(f"{name} did not start: {''.join(seen)!r}")


def drops(name: str, stderr: str) -> int:
    pattern = (r"(\d+) dropped by the kernel" if name == "watch"
               else r"(\d+) packets? dropped by kernel")
    found = re.search(pattern, stderr)
    return int(found.group(1)) if found else -1


def round_of(name: str, count: int, rate: int, directory: str) -> dict:
    path = os.path.join(directory, f"{name}.pcap")
    proc = subprocess.Popen(command(name, path, count), stderr=subprocess.PIPE, text=True,
                            stdout=subprocess.DEVNULL)
    ready(proc, name)
    before = cpu_seconds(proc.pid)
    subprocess.run([sys.executable, "-m", "udp_reader", "-q", "send", f"127.0.0.1:{PORT}",
                    "--rate", str(rate), "--count", str(count), "--flows", "8"],
                   check=True, capture_output=True, timeout=DEADLINE)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{name} exited {proc.returncode}: {stderr[-2000:]}")
    return {"cpu": usage.ru_utime + usage.ru_stime - before, "drops": drops(name, stderr),
            "records": pcap_records(path)}


def main(count: int, rate: int, rounds: int) -> dict:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the port's server
    sink.bind(("127.0.0.1", PORT))
    runs: dict = {"watch": [], "tcpdump": []}
    with tempfile.TemporaryDirectory() as d:
        for _ in range(rounds):
            for name in runs:
                runs[name].append(round_of(name, count, rate, d))
    return {name: {"cpu_seconds": statistics.median(r["cpu"] for r in rows),
                   "drops": max(r["drops"] for r in rows),
                   "records": [r["records"] for r in rows]}
            for name, rows in runs.items()}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))
