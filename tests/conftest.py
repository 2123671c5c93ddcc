"""Helpers for tests that talk to real sockets on loopback."""

from __future__ import annotations

import os
import socket
import threading
from typing import Callable, Iterable, List

import pytest

from udp_reader import Reader

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
