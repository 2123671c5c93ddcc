"""Helpers for tests that talk to real sockets on loopback."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from typing import Callable, Dict, Iterable, List

import pytest

from udp_reader import Reader, sockets

# Longest any test waits for traffic before it stops the reader itself.
DEADLINE = 10.0


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
