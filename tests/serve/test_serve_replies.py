"""`udp-reader serve` answers: a handler's return value (per packet) or
batch.reply() (per batch) goes back to the client, from the address it used."""

from __future__ import annotations

import socket

import pytest

from conftest import DEADLINE
from server import Server


def ask(port: int, payloads: list[bytes], answers: int) -> list[bytes]:
    """Send from one socket connected to the server, so only datagrams from
    the server's own address and port get in; return `answers` replies."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(DEADLINE)
        c.connect(("127.0.0.1", port))
        for payload in payloads:
            c.send(payload)
        return [c.recv(100) for _ in range(answers)]


@pytest.mark.parametrize("handler, args, expected", [
    ("answer_handlers:echo", (), [b"echo:a", b"one", b"two", b"echo:b"]),
    ("answer_handlers:echo_batch", ("--batches",),
     [b"batch:a", b"batch:silence", b"batch:twice", b"batch:b"]),
])
def test_a_served_handler_answers_clients(record_dir, handler, args, expected):
    server = Server(handler, *args, record_dir=record_dir)
    try:
        server.status()
        got = ask(server.port, [b"a", b"silence", b"twice", b"b"], len(expected))
    finally:
        assert server.stop() == 0
    assert got == expected
