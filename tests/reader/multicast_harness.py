"""Multicast scenarios, each run in a network namespace of its own.

`unshare -n python multicast_harness.py SCENARIO` sets up the namespace
(lo with multicast on; a veth pair to a second namespace where a scenario
needs one), runs the scenario and prints one JSON object of what every
reader got, for test_multicast.py to judge. Nothing here asserts.

The second namespace is a sleeping `unshare -n` child; the sender runs in
it through `nsenter`, as `multicast_harness.py send JSON`. Both namespaces
end with their processes: nothing is left behind on the host.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/

from harness import Harness, upgraded, wait_gone  # noqa: E402
from places import HANDLERS  # noqa: E402
from udp_reader import Reader  # noqa: E402

DEADLINE = 20.0  # no wait here is longer
MARK = b"end"    # sent last to a joined group: once it is in, the rest is too
COUNT = 20       # datagrams per group and source


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def lo_multicast() -> None:
    """lo up, multicast on, IPv4 groups routed to it; 10.9.0.1 and 10.9.0.2
    as local sources."""
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "link", "set", "lo", "multicast", "on")
    sh("ip", "route", "add", "224.0.0.0/4", "dev", "lo")
    for address in ("10.9.0.1/32", "10.9.0.2/32"):
        sh("ip", "addr", "add", address, "dev", "lo")


class Peer:
    """A second namespace joined to ours by a veth pair: rd0 here
    (10.7.0.2/24, fd07::2/64), sd0 there (10.7.0.1 and 10.7.0.3, fd07::1 and
    fd07::3)."""

    def __init__(self) -> None:
        own = os.readlink("/proc/self/ns/net")
        self.proc = subprocess.Popen(["unshare", "-n", "sleep", str(int(DEADLINE * 6))])
        deadline = time.monotonic() + DEADLINE
        while os.readlink(f"/proc/{self.proc.pid}/ns/net") == own:
            if time.monotonic() > deadline:
                raise TimeoutError("the peer namespace never came up")
            time.sleep(0.01)
        pid = str(self.proc.pid)
        sh("ip", "link", "add", "rd0", "type", "veth", "peer", "name", "sd0", "netns", pid)
        sh("ip", "link", "set", "rd0", "up")
        sh("ip", "addr", "add", "10.7.0.2/24", "dev", "rd0")
        sh("ip", "-6", "addr", "add", "fd07::2/64", "dev", "rd0", "nodad")
        for command in (["link", "set", "lo", "up"], ["link", "set", "sd0", "up"],
                        ["addr", "add", "10.7.0.1/24", "dev", "sd0"],
                        ["addr", "add", "10.7.0.3/24", "dev", "sd0"],
                        ["-6", "addr", "add", "fd07::1/64", "dev", "sd0", "nodad"],
                        ["-6", "addr", "add", "fd07::3/64", "dev", "sd0", "nodad"]):
            sh("nsenter", "-t", pid, "-n", "ip", *command)
        self.ifindex = socket.if_nametoindex("rd0")

    def send(self, plan: List[dict]) -> None:
        """Run send() in the peer namespace."""
        subprocess.run(["nsenter", "-t", str(self.proc.pid), "-n", sys.executable,
                        os.path.abspath(__file__), "send", json.dumps(plan)],
                       check=True, capture_output=True, timeout=DEADLINE)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def send(plan: List[dict]) -> None:
    """Each step: `count` datagrams (payload "<tag> <n>") to (group, port)
    from `source`, out of `interface`, with `ttl` and `tos` when given. On
    one CPU, so every datagram takes the same backlog and the last sent is
    the last to arrive."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        _send(plan)
    finally:
        os.sched_setaffinity(0, cpus)


def _send(plan: List[dict]) -> None:
    for step in plan:
        family = socket.AF_INET6 if ":" in step["group"] else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((step.get("source", "::" if family == socket.AF_INET6 else "0.0.0.0"), 0))
            if "interface" in step:
                index = socket.if_nametoindex(step["interface"])
                if family == socket.AF_INET:
                    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                 socket.inet_aton("0.0.0.0") * 2 + index.to_bytes(4, sys.byteorder))
                else:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            if family == socket.AF_INET:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, step.get("ttl", 1))
                s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, step.get("tos", 0))
            else:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, step.get("ttl", 1))
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, step.get("tos", 0))
            for n in range(step.get("count", COUNT)):
                payload = step["tag"] if step.get("count") == 1 else f"{step['tag']} {n}"
                s.sendto(payload.encode(), (step["group"], step["port"]))


def described(packet) -> dict:
    return {"data": packet.data.decode(), "src": packet.src[0], "dst": packet.dst,
            "ifindex": packet.ifindex, "ttl": packet.ttl, "tos": packet.tos, "ecn": packet.ecn}


def take(reader: Reader, marks: int = 1) -> List[dict]:
    """Everything the reader gets until `marks` end marks are in."""
    got: List[dict] = []
    deadline = time.monotonic() + DEADLINE
    while sum(p["data"] == MARK.decode() for p in got) < marks:
        if time.monotonic() > deadline:
            got.append({"data": "TIMEOUT"})
            break
        batch = reader.receive_batch()
        if batch is None:
            time.sleep(0.005)
            continue
        got.extend(described(p) for p in batch)
    return got


def tags(got: List[dict]) -> Dict[str, int]:
    """How many datagrams of each tag (source and group) arrived."""
    counts: Dict[str, int] = {}
    for p in got:
        tag = p["data"].split(" ")[0]
        counts[tag] = counts.get(tag, 0) + 1
    return counts


def drain_plain(sock: socket.socket) -> List[str]:
    sock.setblocking(False)
    out = []
    while True:
        try:
            out.append(sock.recv(100).decode())
        except BlockingIOError:
            return out


# -- scenarios ----------------------------------------------------------------------

def scenario_lo() -> dict:
    """IPv4 on lo: any-source and source-specific, a group not joined (while
    a plain socket on the port, IP_MULTICAST_ALL on, shows it did arrive),
    then leave and join at run time."""
    lo_multicast()
    lo = socket.if_nametoindex("lo")
    a = Reader(":0", join=["239.1.2.3@lo"], ip_fields=True)  # dual-stack, any source
    port = a.address[1]
    b = Reader(f"0.0.0.0:{port}", join=[f"10.9.0.1>232.1.1.1@{lo}"], ip_fields=True)
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    plain.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    plain.bind(("0.0.0.0", port))  # kernel defaults: IP_MULTICAST_ALL on
    plain.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     socket.inet_aton("239.1.2.4") + bytes(4) + lo.to_bytes(4, sys.byteorder))

    def round_(prefix: str) -> List[dict]:
        plan = []
        for source, ttl, tos in (("10.9.0.1", 5, 0xb9), ("10.9.0.2", 6, 0x2a)):
            for group in ("239.1.2.3", "232.1.1.1", "239.1.2.4"):
                plan.append({"group": group, "port": port, "source": source, "ttl": ttl,
                             "tos": tos, "tag": f"{prefix}{source}>{group}"})
        # Marks to a group each reader has joined, from the source it takes.
        for group in ("239.1.2.3", "239.1.2.4", "232.1.1.1"):
            plan.append({"group": group, "port": port, "source": "10.9.0.1", "count": 1,
                         "tag": MARK.decode()})
        return plan

    send(round_("1:"))
    first = {"a": take(a), "b": take(b), "plain": drain_plain(plain)}
    # At run time: a leaves its group and joins another; b adds a source.
    a.leave("239.1.2.3", interface="lo")
    a.join("239.1.2.4", interface=lo)
    b.join("232.1.1.1", interface="lo", source="10.9.0.2")
    memberships = {"a": [list(m) for m in a.memberships],
                   "b": [list(m) for m in b.memberships]}
    send(round_("2:"))
    second = {"a": take(a), "b": take(b)}
    return {"lo": lo, "port": port, "first": first, "second": second,
            "memberships": memberships, "ctrunc": [a.stats.ctrunc, b.stats.ctrunc]}


def scenario_veth() -> dict:
    """Across a veth pair from a second namespace: IPv4 and IPv6, any-source
    and source-specific, interfaces by name, index and address, TTL/TOS/ECN
    as sent; a second process on the same groups gets every datagram too."""
    sh("ip", "link", "set", "lo", "up")
    peer = Peer()
    try:
        rd0 = peer.ifindex
        joins = ["239.2.0.1@rd0", f"10.7.0.1>232.2.0.1@{rd0}", "239.2.0.2@10.7.0.2",
                 "ff15::2:1@rd0", f"fd07::1>ff35::2:1@{rd0}"]
        reader = Reader(":0", join=joins, ip_fields=True)  # dual-stack: both families
        port = reader.address[1]
        other = subprocess.Popen([sys.executable, os.path.abspath(__file__), "read",
                                  str(port), json.dumps(joins)],
                                 stdout=subprocess.PIPE, text=True)
        ready = other.stdout.readline()  # the other process joined
        plan = []
        for family, good, bad in (("4", "10.7.0.1", "10.7.0.3"), ("6", "fd07::1", "fd07::3")):
            groups = (["239.2.0.1", "232.2.0.1", "239.2.0.2", "239.2.0.9"] if family == "4"
                      else ["ff15::2:1", "ff35::2:1", "ff15::2:9"])
            for source in (good, bad):
                for group in groups:
                    plan.append({"group": group, "port": port, "source": source,
                                 "interface": "sd0", "ttl": 9, "tos": 0xb9,
                                 "tag": f"{source}>{group}"})
        plan.append({"group": "239.2.0.1", "port": port, "source": "10.7.0.1",
                     "interface": "sd0", "count": 1, "tag": MARK.decode()})
        peer.send(plan)
        got = take(reader)
        other_got = json.loads(other.communicate(timeout=DEADLINE)[0])
        return {"rd0": rd0, "ready": ready.strip(), "reader": got, "other": other_got,
                "memberships": [list(m) for m in reader.memberships],
                "ctrunc": reader.stats.ctrunc}
    finally:
        peer.close()


def scenario_every_interface() -> dict:
    """@* joins on every interface that is up and multicast-capable (lo and
    rd0 here): datagrams arrive through both, each with its ifindex."""
    lo_multicast()
    peer = Peer()
    try:
        reader = Reader(":0", join=["239.4.0.1@*"])
        port = reader.address[1]
        peer.send([{"group": "239.4.0.1", "port": port, "source": "10.7.0.1",
                    "interface": "sd0", "tag": "veth"}])
        send([{"group": "239.4.0.1", "port": port, "source": "10.9.0.1", "interface": "lo",
               "tag": "lo"},
              {"group": "239.4.0.1", "port": port, "source": "10.9.0.1", "interface": "lo",
               "count": 1, "tag": MARK.decode()}])
        got = take(reader)
        joined = [list(m) for m in reader.memberships]
        reader.leave("239.4.0.1", interface="*")
        return {"lo": socket.if_nametoindex("lo"), "rd0": peer.ifindex, "got": got,
                "joined": joined, "after_leave": [list(m) for m in reader.memberships]}
    finally:
        peer.close()


def scenario_serve() -> dict:
    """`serve --join` with 2 workers: one shared socket, every datagram
    handled once; then USR2, and the new master's workers still get the
    group (the membership went with the socket)."""
    lo_multicast()
    with tempfile.TemporaryDirectory() as d:
        h = Harness(d, rate=1, handler="packet")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("0.0.0.0", 0))
            port = probe.getsockname()[1]
        master = h.serve("--workers", "2", "--bind", f":{port}", "--join", "239.5.0.1@lo",
                         bind=False)
        facts: dict = {}
        try:
            h.notify.ready(MAINPID=str(master.pid))
            first = numbered(port, 0, 2000)
            wait_records(h, 2000)
            master.send_signal(signal.SIGUSR2)
            new = upgraded(h, master)
            wait_gone(master.pid)
            facts["old_master_exit"] = master.wait(DEADLINE)
            master = new
            second = numbered(port, 2000, 2000)
            wait_records(h, 4000)
        finally:
            master.send_signal(signal.SIGTERM)
            facts["master_exit"] = master.wait(DEADLINE)
        numbers = [n for _, _, got in h.records() for n in got.tolist()]
        facts.update(sent=first + second, handled=len(numbers), distinct=len(set(numbers)),
                     lowest=min(numbers, default=-1), highest=max(numbers, default=-1),
                     workers=len({pid for _, pid, _ in h.records()}), log=h.log_text())
        return facts


COMMAND = [sys.executable, "-m", "udp_reader"]


def scenario_listen() -> dict:
    """`udp-reader listen --join` shows multicast packets with TTL and TOS."""
    lo_multicast()
    proc = subprocess.Popen([*COMMAND, "listen", ":0", "--join", "10.9.0.1>232.6.0.1@lo",
                             "--join", "239.6.0.1@lo", "--format", "jsonl", "--count", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()
    port = int(first.rsplit(":", 1)[1])
    joined = [proc.stderr.readline().strip(), proc.stderr.readline().strip()]
    send([{"group": "239.6.0.1", "port": port, "source": "10.9.0.2", "interface": "lo",
           "ttl": 3, "tos": 0x2e, "count": 1, "tag": "any"},
          {"group": "232.6.0.1", "port": port, "source": "10.9.0.2", "interface": "lo",
           "count": 1, "tag": "unlisted"},
          {"group": "232.6.0.1", "port": port, "source": "10.9.0.1", "interface": "lo",
           "ttl": 4, "tos": 0xb9, "count": 3, "tag": "listed"}])
    out, err = proc.communicate(timeout=DEADLINE)
    return {"code": proc.returncode, "first": first, "joined": joined,
            "lines": out.splitlines(), "stderr": err}


def scenario_cli_errors() -> dict:
    """Wrong --join values that only a namespace of our own may try: each
    is one line and exit 2."""
    lo_multicast()
    cases = {
        "twice": ["listen", ":0", "--join", "239.7.0.1@lo", "--join", "239.7.0.1@lo"],
        "narrowing": ["listen", ":0", "--join", "239.7.0.1@lo", "--join", "10.9.0.1>239.7.0.1@lo"],
        "no_address": ["listen", ":0", "--join", "239.7.0.1@10.1.2.3"],
        "no_route": ["listen", "[::]:0", "--join", "ff15::7"],
        "serve_twice": ["serve", "recorder:on_packet", "--bind", ":0", "--join", "239.7.0.1@lo",
                        "--join", "239.7.0.1@lo"],
    }
    out = {}
    for name, args in cases.items():
        result = subprocess.run([*COMMAND, *args], capture_output=True, text=True,
                                timeout=DEADLINE, cwd=HANDLERS)
        out[name] = [result.returncode, result.stderr]
    return out


def numbered(port: int, first: int, count: int) -> int:
    """Send numbers first.. as 8-byte payloads to 239.5.0.1 from 8 source ports."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
    try:
        for n in range(first, first + count):
            socks[n % 8].sendto(n.to_bytes(8, "little") + bytes(56), ("239.5.0.1", port))
            if n % 256 == 255:
                time.sleep(0.002)  # a pace the workers keep up with at their defaults
    finally:
        for s in socks:
            s.close()
    return count


def wait_records(h: Harness, count: int) -> None:
    """Until `count` numbers are recorded, and then a moment longer for
    duplicates to show (bounded)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if sum(len(got) for _, _, got in h.records()) >= count:
            break
        time.sleep(0.02)
    time.sleep(0.2)


def read(port: int, joins: List[str]) -> None:
    """A second process on the same groups: say when joined, then print what
    arrived until the end mark."""
    with Reader(f":{port}", join=joins, ip_fields=True) as reader:
        print("joined", flush=True)
        print(json.dumps(take(reader)), flush=True)


SCENARIOS = {"lo": scenario_lo, "veth": scenario_veth, "every_interface": scenario_every_interface,
             "serve": scenario_serve, "listen": scenario_listen, "cli_errors": scenario_cli_errors}


def run_in_namespace(name: str) -> dict:
    """Run a scenario under `unshare -n`; returns its report."""
    result = subprocess.run(["unshare", "-n", sys.executable, os.path.abspath(__file__), name],
                            capture_output=True, text=True, timeout=DEADLINE * 6)
    if result.returncode != 0:
        raise RuntimeError(f"scenario {name} failed:\n{result.stderr[-5000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(json.loads(sys.argv[2]))
    elif sys.argv[1] == "read":
        read(int(sys.argv[2]), json.loads(sys.argv[3]))
    else:
        print(json.dumps(SCENARIOS[sys.argv[1]]()))
