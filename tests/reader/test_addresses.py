"""Addresses a Reader binds: the port it got, dual stack, and the errors
that name the address."""

import socket

import pytest

from udp_reader import Reader


def test_port_zero_reports_bound_port():
    with Reader("127.0.0.1:0") as r:
        host, port = r.address
        assert host == "127.0.0.1" and port > 0


def test_wildcard_is_dual_stack():
    with Reader(":0") as r:
        assert r.socket.family == socket.AF_INET6
        assert r.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0


def test_unresolvable_host_names_it():
    with pytest.raises(OSError, match="no-such-host.invalid"):
        Reader("no-such-host.invalid:9000")


def test_failed_bind_names_address():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{port}"):
            Reader(("127.0.0.1", port), reuseport=False)


def test_bind_to_foreign_address_fails_clearly():
    with pytest.raises(OSError, match="cannot bind 192.0.2.1:0"):
        Reader("192.0.2.1:0")
