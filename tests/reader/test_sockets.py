"""Socket helpers: the receive buffer, discarding a queue."""

from __future__ import annotations

import socket

import pytest

from conftest import as_nobody, rmem, root_only, send
from test_gro import numbered, send_gso
from udp_reader import sockets


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


@root_only
def test_forced_past_rmem_max_as_root():
    size = 2 * rmem("rmem_max") + 4096
    with udp_socket() as s:
        assert sockets.set_rcvbuf(s, size) == 2 * size


@root_only
def test_at_least_never_shrinks():
    with udp_socket() as s:
        sockets.set_rcvbuf(s, 8 << 20)
        assert sockets.set_rcvbuf(s, 1 << 20, at_least=True) == 16 << 20
        assert sockets.set_rcvbuf(s, 12 << 20, at_least=True) == 24 << 20
        assert sockets.set_rcvbuf(s, 1 << 20) == 2 << 20  # without: exactly as asked


@root_only
def test_capped_buffer_warns_once_per_process():
    cap = rmem("rmem_max")
    larger = 4 * cap  # what root forced before handing the socket over
    with udp_socket() as kept:
        sockets.set_rcvbuf(kept, larger)

        def work() -> dict:
            with udp_socket() as a, udp_socket() as b:
                return {"a": sockets.set_rcvbuf(a, 2 * cap),
                        "b": sockets.set_rcvbuf(b, 2 * cap),
                        "kept": sockets.set_rcvbuf(kept, 2 * larger, at_least=True)}

        result = as_nobody(work)
    assert result["a"] == result["b"] == 2 * cap
    # SO_RCVBUF alone would have cut it to the cap: left as it was.
    assert result["kept"] == 2 * larger
    (warning,) = result["warnings"]
    assert f"asked for {2 * cap} bytes" in warning
    assert f"granted {cap}" in warning
    assert f"sysctl -w net.core.rmem_max={2 * cap}" in warning


def test_discard_queue_counts_and_empties_the_queue():
    with udp_socket() as s:
        sockets.enable_metadata(s)
        sockets.enable_timestamps(s)
        s.settimeout(5.0)  # must not wait all the same
        assert sockets.discard_queue(s) == 0
        send(s.getsockname(), [b"", b"x", bytes(65507)] + [b"y" * 100] * 50)
        assert sockets.discard_queue(s) == 53
        assert sockets.discard_queue(s) == 0
        assert s.gettimeout() == 5.0


@pytest.mark.parametrize("gro", [False, True])
def test_discard_queue_counts_every_datagram_of_a_merged_receive(gro):
    with udp_socket() as s:
        sockets.enable_metadata(s)
        if gro:
            assert sockets.enable_gro(s)
        send_gso(s.getsockname(), numbered(10, 100) + b"tail", 100)  # 10 x 100, then 4
        send_gso(s.getsockname(), numbered(64, 64), 64)
        first = len(s.recv(65536, socket.MSG_PEEK))
        assert first == (1004 if gro else 100)  # merged, or not
        assert sockets.discard_queue(s) == 11 + 64
        assert sockets.discard_queue(s) == 0
