"""Helpers for tests that talk to real sockets on loopback. The tests sit in
folders by what they prove: unit/ (no socket, no process), reader/, cli/,
serve/, examples/, forward/ (against a real nats-server, jetstream.py);
the handlers serve runs for them in handlers/."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from typing import Callable, Dict, Iterable, List, Sequence

import pytest

from udp_reader import Reader, sockets

# Longest any test waits for traffic before it stops the reader itself.
DEADLINE = 10.0


# CI runs the suite a second time against a build with AddressSanitizer,
# its runtime preloaded into every Python.
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")


def can_unshare(*tools: str) -> bool:
    """A network namespace of our own can be made here (`unshare -n`: root
    or user namespaces), and `tools` are installed."""
    return all(shutil.which(t) for t in ("unshare", *tools)) and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True).returncode == 0


needs_namespace = pytest.mark.skipif(not can_unshare(),
                                     reason="needs `unshare -n` (root or user namespaces)")


def free_port() -> int:
    """A UDP port on loopback that nobody holds right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def send(address, payloads: Iterable[bytes], *, family: int = socket.AF_INET,
         source: str | None = None) -> int:
    """Send each payload once from one fresh socket; returns how many."""
    count = 0
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        if source is not None:
            s.bind((source, 0))
        for payload in payloads:
            s.sendto(payload, address)
            count += 1
    return count


def collect(reader: Reader, count: int, *, keep: Callable = lambda p: p.data,
            batches: bool = False, deadline: float = DEADLINE) -> List:
    """Run `reader` until `count` packets arrived (or `deadline` passed) and
    return what `keep` made of each."""
    got: List = []
    guard = threading.Timer(deadline, reader.stop)
    guard.start()
    try:
        if batches:
            def on_batch(batch):
                got.extend(keep(p) for p in batch)
                if len(got) >= count:
                    reader.stop()
            reader.run_batches(on_batch)
        else:
            def on_packet(packet):
                got.append(keep(packet))
                if len(got) >= count:
                    reader.stop()
            reader.run(on_packet)
    finally:
        guard.cancel()
    return got


def steer(readers: Sequence[Reader], flows: int, *, tries: int = 20
          ) -> List[List[socket.socket]]:
    """`flows` sender sockets on loopback (a source port each), grouped by
    the reader of the port's SO_REUSEPORT group the kernel's hash steers
    each to. One probe per flow finds out (and is read back, so the
    queues are as they were); flows are drawn anew until every reader has
    some, at most `tries` times."""
    address = readers[0].address
    for _ in range(tries):
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(flows)]
        for s in senders:
            s.bind(("127.0.0.1", 0))
            s.sendto(b"probe", address)  # loopback: queued before sendto returns
        groups = []
        for r in readers:
            ports = set()
            while (batch := r.receive_batch()) is not None:
                ports.update(p.src[1] for p in batch)
            groups.append([s for s in senders if s.getsockname()[1] in ports])
        if all(groups) and sum(map(len, groups)) == flows:
            return groups
        for s in senders:
            s.close()
    pytest.fail(f"the kernel never spread {flows} flows over {len(readers)} sockets")


def wait_until_bound(port: int) -> None:
    """Wait until some IPv4 UDP socket is bound to `port` (/proc/net/udp)."""
    local = f":{port:04X}"  # local_address is HEXADDR:HEXPORT
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        with open("/proc/net/udp") as f:
            if any(line.split()[1].endswith(local) for line in f.readlines()[1:]):
                return
        time.sleep(0.01)
    pytest.fail(f"nothing bound UDP port {port} within {DEADLINE} s")


# Processes a test started that must not outlive it, even when it fails
# before stopping them (anything with a stop() method).
STARTED: list = []


@pytest.fixture(autouse=True)
def _stop_what_the_test_started():
    yield
    while STARTED:
        STARTED.pop().stop()


@pytest.fixture
def record_dir(tmp_path) -> str:
    """Where a test's server records what its handler got (RECORD_DIR)."""
    return str(tmp_path)


@pytest.fixture
def reader():
    with Reader("127.0.0.1:0") as r:
        yield r


def lo_index() -> int:
    return socket.if_nametoindex("lo")


NOBODY = 65534
root_only = pytest.mark.skipif(os.getuid() != 0, reason="needs root (SO_RCVBUFFORCE, setuid)")


def rmem(name: str) -> int:
    with open(f"/proc/sys/net/core/{name}") as f:
        return int(f.read())


def as_nobody(work: Callable[[], Dict]) -> Dict:
    """Run work() in a forked child that dropped to nobody (no exec, so
    root's private interpreter is no obstacle); returns what it returned,
    with the udp_reader warnings it logged under "warnings"."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            records: list = []
            handler = logging.Handler()
            handler.emit = records.append
            logging.getLogger("udp_reader").addHandler(handler)
            sockets._warned_capped = False  # a fresh process's state
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result = work()
            result["warnings"] = [r.getMessage() for r in records
                                  if r.levelno == logging.WARNING]
        except BaseException as e:
            result = {"error": repr(e)}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        result = json.loads(f.read() or b"{}")
    os.waitpid(pid, 0)
    assert "error" not in result, result["error"]
    return result


def cmsg(level: int, kind: int, data: bytes, claimed: int | None = None) -> bytes:
    """One control message: its header (with a claimed length, maybe a lie)
    and data, padded as CMSG_SPACE pads."""
    length = 16 + len(data) if claimed is None else claimed
    body = struct.pack("QiI", length, level, kind) + data
    return body + bytes(-len(body) % 8)
