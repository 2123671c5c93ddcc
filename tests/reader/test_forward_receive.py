"""A real receive packed into one forwarded message and unpacked again:
every datagram's facts come back as the Reader gave them."""

from __future__ import annotations

import socket

import pytest

from conftest import send
from udp_reader import Reader
from udp_reader.forward.records import unpack, pack


def facts(packet):
    return (packet.data, packet.src, packet.dst, packet.ifindex, packet.timestamp_ns,
            packet.family, packet.ttl, packet.tos)


@pytest.mark.parametrize("bind, to, family", [
    ("127.0.0.1:0", "127.0.0.1", socket.AF_INET),
    ("[::1]:0", "::1", socket.AF_INET6),
])
def test_a_receive_comes_back_datagram_for_datagram(bind, to, family):
    payloads = [b"first", b"", bytes(range(256)) * 4, b"x" * 1400]
    with Reader(bind, timestamps=True, ip_fields=True, batch_size=64) as reader:
        port = reader.address[1]
        send((to, port), payloads, family=family)
        batch = reader.receive_batch()  # loopback queues before sendto returns
        assert batch is not None and len(batch) == len(payloads)
        got = unpack(pack(batch, port))
        assert [facts(p) for p in got.batch] == [facts(p) for p in batch]
    assert [p.data for p in got.batch] == payloads
    assert all(p.timestamp_ns for p in got.batch)
    assert got.dst_port.tolist() == [port] * len(payloads)
