"""`udp-reader watch` and `listen` beside a running `serve`, in a private
network namespace (`unshare -n python watch_harness.py SCENARIO`): the
handler must get every datagram whatever watches, and the watcher must show
every one. Workers record each sequence number they handle (recorder.py).
Prints one JSON object with what each side got.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/

from harness import DEADLINE, Notifications, Sender  # noqa: E402
from places import HANDLERS  # noqa: E402

PORT = 7777
OTHER_PORT = PORT + 1  # traffic the watcher must not show
TTL = 33
COMMAND = [sys.executable, "-m", "udp_reader"]


class Serve:
    """A 2-worker serve of :PORT (IPv4 and IPv6) recording every number."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.notify = Notifications(directory)
        env = dict(os.environ, RECORD_DIR=directory, NOTIFY_SOCKET=self.notify.path,
                   PYTHONPATH=HANDLERS + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.log = open(os.path.join(directory, "serve.log"), "w")
        self.proc = subprocess.Popen(
            [*COMMAND, "serve", "recorder:on_batch", "--batches", "--workers", "2",
             "--bind", f":{PORT}"], env=env, cwd=HANDLERS, stderr=self.log)
        self.notify.ready()

    def numbers(self) -> np.ndarray:
        parts = [np.fromfile(os.path.join(self.dir, name), dtype="<u8")
                 for name in os.listdir(self.dir) if name.endswith(".seq")]
        return np.concatenate(parts) if parts else np.empty(0, dtype="<u8")

    def wait_for(self, count: int) -> np.ndarray:
        """The numbers handled, once there are `count` (or DEADLINE passed)."""
        deadline = time.monotonic() + DEADLINE
        while len(numbers := self.numbers()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return numbers

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(DEADLINE)
        self.log.close()
        return code


def start(directory: str, name: str, *args: str) -> subprocess.Popen:
    """A udp-reader command whose stdout goes to a file; returns once its
    first log line says it is ready (bound, or its filter in place)."""
    out = open(os.path.join(directory, f"{name}.out"), "wb")
    proc = subprocess.Popen([*COMMAND, *args], stdout=out, stderr=subprocess.PIPE, text=True)
    out.close()
    proc.first_line = proc.stderr.readline()  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, directory: str, name: str) -> dict:
    _, err = proc.communicate(timeout=DEADLINE)
    with open(os.path.join(directory, f"{name}.out"), "rb") as f:
        out = f.read()
    return {"exit": proc.returncode, "first_line": proc.first_line.strip(),
            "stderr": err.strip().splitlines(), "out": out}


def senders(flows: int) -> list:
    """Sockets sending with TTL/hop limit TTL: every fourth over IPv6."""
    socks = []
    for i in range(flows):
        if i % 4 == 3:
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, TTL)
            s.bind(("::1", 0))
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, TTL)
            s.bind(("127.0.0.1", 0))
        socks.append(s)
    return socks


def send(count: int, flows: int, decoys: int = 0) -> list:
    """Numbers 0..count-1, number n from flow n % flows; `decoys` more to
    OTHER_PORT in between. Returns the source ports."""
    socks = senders(flows)
    for n in range(count):
        s = socks[n % flows]
        host = "::1" if s.family == socket.AF_INET6 else "127.0.0.1"
        s.sendto(struct.pack("<Q", n) + bytes(24), (host, PORT))
        if n < decoys:
            s.sendto(struct.pack("<Q", n), (host, OTHER_PORT))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def jsonl_numbers(out: bytes) -> list:
    rows = [json.loads(line) for line in out.decode().splitlines()]
    return rows, [struct.unpack_from("<Q", base64.b64decode(r["payload"]))[0] for r in rows]


def pcap_records(path: str) -> int:
    with open(path, "rb") as f:
        data = f.read()
    at, count = 24, 0
    while at < len(data):
        length = struct.unpack_from("=I", data, at + 8)[0]
        at += 16 + length
        count += 1
    return count


def exact(numbers, count: int) -> bool:
    return sorted(int(n) for n in numbers) == list(range(count))


def beside_serve(count: int) -> dict:
    """Two watchers (jsonl; pcap with --top) while serve handles `count`
    datagrams from 8 ports; listen refused on the served port."""
    with tempfile.TemporaryDirectory() as d:
        serve = Serve(d)
        refused = subprocess.run([*COMMAND, "listen", f":{PORT}", "--count", "1"],
                                 capture_output=True, text=True, timeout=DEADLINE)
        pcap = os.path.join(d, "w.pcap")
        jsonl = start(d, "jsonl", "watch", f":{PORT}", "--format", "jsonl", "--count",
                      str(count), "--status-interval", "0")
        top = start(d, "top", "watch", f":{PORT}", "--write", pcap, "--top", "--count",
                    str(count), "--status-interval", "0")
        ports = send(count, 8, decoys=count // 10)
        handled = serve.wait_for(count)
        a, b = finish(jsonl, d, "jsonl"), finish(top, d, "top")
        rows, shown = jsonl_numbers(a["out"])
        tcpdump = None
        if os.path.exists("/usr/bin/tcpdump") or os.path.exists("/usr/sbin/tcpdump"):
            tcpdump = len(subprocess.run(["tcpdump", "-nn", "-r", pcap, "udp", "and", "dst",
                                          "port", str(PORT)], capture_output=True, text=True,
                                         timeout=DEADLINE).stdout.splitlines())
        report = {
            "sent": count, "handled": len(handled), "handled_exact": exact(handled, count),
            "refused_exit": refused.returncode, "refused_stderr": refused.stderr.splitlines(),
            "jsonl_exit": a["exit"], "jsonl_first_line": a["first_line"],
            "jsonl_summary": a["stderr"][-1:], "shown": len(shown),
            "shown_exact": exact(shown, count),
            "dports": sorted({r["dport"] for r in rows}),
            "ttls": sorted({r["ttl"] for r in rows}),
            "sources": sorted({r["src"] for r in rows}),
            "sport_known": all(r["sport"] in ports for r in rows),
            "ifnames": sorted({r["ifname"] for r in rows}),
            "top_exit": b["exit"], "top_summary": b["stderr"][-1:],
            "top_total": f"total {count} pkt" in b["out"].decode(),
            "pcap_records": pcap_records(pcap), "tcpdump_read": tcpdump,
        }
        report["serve_exit"] = serve.stop()
    return report


def share(count: int) -> dict:
    """listen --share beside serve takes part of the traffic, as before."""
    with tempfile.TemporaryDirectory() as d:
        serve = Serve(d)
        listen = start(d, "listen", "listen", f":{PORT}", "--share", "--format", "jsonl",
                       "--status-interval", "0")
        send(count, 32)
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            with open(os.path.join(d, "listen.out"), "rb") as f:
                taken = f.read().count(b"\n")
            if taken + len(serve.numbers()) >= count:
                break
            time.sleep(0.02)
        listen.send_signal(signal.SIGINT)
        result = finish(listen, d, "listen")
        _, taken_numbers = jsonl_numbers(result["out"])
        handled = serve.numbers()
        report = {"sent": count, "handled": len(handled), "listen_took": len(taken_numbers),
                  "all_once": exact([*handled.tolist(), *taken_numbers], count),
                  "listen_exit": result["exit"], "listen_first_line": result["first_line"],
                  "serve_exit": serve.stop()}
    return report


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rate(rate: int, seconds: float, *watch_args: str) -> dict:
    """Serve and a watcher under `rate` datagrams/s from 32 ports for
    `seconds`: what each got and the watcher's CPU while it ran."""
    count = int(rate * seconds)
    with tempfile.TemporaryDirectory() as d:
        serve = Serve(d)
        watcher = start(d, "watch", "watch", f":{PORT}", "--count", str(count),
                        "--status-interval", "0", *(watch_args or ("--format", "none")))
        before = cpu_seconds(watcher.pid)
        sender = Sender(rate, size=64, limit=count, max_seconds=seconds + DEADLINE, port=PORT)
        sender.run()  # in this thread: it ends after `count` numbers
        handled = serve.wait_for(count)
        deadline = time.monotonic() + DEADLINE
        while watcher.poll() is None and time.monotonic() < deadline:
            after = cpu_seconds(watcher.pid)
            time.sleep(0.02)
        result = finish(watcher, d, "watch")
        report = {"rate": rate, "sent": sender.sent, "seconds": round(sender.elapsed, 2),
                  "achieved_rate": round(sender.achieved_rate()), "handled": len(handled),
                  "handled_exact": exact(handled, count), "watcher_summary": result["stderr"][-1:],
                  "watcher_exit": result["exit"],
                  "watcher_cpu_seconds": round(after - before, 3),
                  "watcher_cpu_share": round((after - before) / max(sender.elapsed, 1e-9), 3),
                  "serve_exit": serve.stop()}
    return report


def run_in_namespace(name: str, *args: str) -> dict:
    """Run a scenario in a fresh network namespace; returns its report."""
    result = subprocess.run(["unshare", "-n", sys.executable, os.path.abspath(__file__), name,
                             *args], capture_output=True, text=True, timeout=DEADLINE * 6)
    if result.returncode != 0:
        raise RuntimeError(f"scenario {name} failed:\n{result.stderr[-5000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["beside_serve", "share", "rate"])
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--rate", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("watch_args", nargs="*")
    options = parser.parse_args()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if options.scenario == "beside_serve":
        print(json.dumps(beside_serve(options.count)))
    elif options.scenario == "share":
        print(json.dumps(share(options.count)))
    else:
        print(json.dumps(rate(options.rate, options.seconds, *options.watch_args)))
