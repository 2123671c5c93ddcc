"""Per-packet TTL (hop limit), TOS (traffic class) and ECN, opt-in with
Reader(ip_fields=True): what a sender sets is read back exactly, on IPv4,
IPv6 and dual-stack sockets; without the option they are None."""

from __future__ import annotations

import socket
import struct

import pytest

from conftest import DEADLINE, cmsg, collect
from udp_reader import Reader
from udp_reader._core import _engine_feed

IPV4 = (socket.AF_INET, "127.0.0.1")
IPV6 = (socket.AF_INET6, "::1")


def sender(family: int, host: str, ttl: int, tos: int) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    if family == socket.AF_INET:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
    else:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
    return s


def fields(packet) -> tuple:
    return (packet.data, packet.family, packet.ttl, packet.tos, packet.ecn)


@pytest.mark.parametrize("bind, senders", [
    ("127.0.0.1:0", [IPV4]),
    ("[::1]:0", [IPV6]),
    (":0", [IPV4, IPV6]),  # dual-stack: IPv4 needs the IPv4 options on the IPv6 socket
])
def test_what_the_sender_sets_is_read_back(bind, senders):
    # ECN in the low two bits: ECT(1), ECT(0), CE, and not ECN-capable.
    settings = [(7, 0xb9), (64, 0x2a), (1, 0x03), (255, 0xfc)]
    with Reader(bind, ip_fields=True) as reader:
        port = reader.address[1]
        expected = []
        for family, host in senders:
            for ttl, tos in settings:
                with sender(family, host, ttl, tos) as s:
                    data = f"{host} {ttl} {tos}".encode()
                    s.sendto(data, (host, port))
                    expected.append((data, family, ttl, tos, tos & 3))
        got = collect(reader, len(expected), keep=fields)
        assert reader.ip_fields and reader.stats.ctrunc == 0
    assert got == expected


def test_batch_columns_match_the_packets():
    with Reader(":0", ip_fields=True) as reader:
        port = reader.address[1]
        for ttl, tos in ((3, 0x10), (200, 0xb9)):
            with sender(*IPV4, ttl, tos) as s:
                s.sendto(b"x", ("127.0.0.1", port))
        got = collect(reader, 2, batches=True, keep=lambda p: (p.ttl, p.tos))
    assert got == [(3, 0x10), (200, 0xb9)]
    with Reader(":0", ip_fields=True) as reader:
        with sender(*IPV6, 9, 0x2e) as s:
            s.sendto(b"y", ("::1", reader.address[1]))
        batch = None
        for _ in range(1000):  # loopback queues before sendto returns
            batch = reader.receive_batch()
            if batch is not None:
                break
        assert batch is not None
        assert batch.ttl.tolist() == [9] and batch.tos.tolist() == [0x2e]
        assert batch.records["ttl"].tolist() == [9]


def test_without_the_option_they_are_none():
    with Reader("127.0.0.1:0") as reader:
        with sender(*IPV4, 7, 0xb9) as s:
            s.sendto(b"x", reader.address)
        batch = None
        for _ in range(1000):
            batch = reader.receive_batch()
            if batch is not None:
                break
        assert batch is not None
        packet = batch[0]
        assert (packet.ttl, packet.tos, packet.ecn) == (None, None, None)
        assert batch.ttl is None and batch.tos is None
        assert not reader.ip_fields
        # Not asked for, so the kernel sent no control message for them.
        assert batch.records["ttl"].tolist() == [0]


def test_every_option_at_once_fits_the_control_buffer():
    # A dual-stack socket's IPv4 datagram brings the most control messages:
    # pktinfo, timestamp, drop count, GRO, TTL and TOS.
    with Reader(":0", ip_fields=True, timestamps=True, gro=True) as reader:
        with sender(*IPV4, 5, 0xb9) as s:
            for _ in range(3):
                s.sendto(b"z" * 100, ("127.0.0.1", reader.address[1]))
        got = collect(reader, 3, keep=lambda p: (p.ttl, p.tos, p.timestamp is not None,
                                                 p.dst))
        stats = reader.stats
    assert got == [(5, 0xb9, True, "127.0.0.1")] * 3
    assert stats.ctrunc == 0


def test_the_parser_reads_each_field_and_ignores_short_ones():
    control = (cmsg(socket.IPPROTO_IP, socket.IP_TTL, struct.pack("i", 33))
               + cmsg(socket.IPPROTO_IP, socket.IP_TOS, b"\xb9"))
    [record], _ = _engine_feed(control, b"", 10, 0)
    assert (record["ttl"], record["tos"]) == (33, 0xb9)
    control = (cmsg(socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, struct.pack("i", 250))
               + cmsg(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, struct.pack("i", 0x2a)))
    [record], _ = _engine_feed(control, b"", 10, 0)
    assert (record["ttl"], record["tos"]) == (250, 0x2a)
    # A message shorter than its field is not read.
    control = (cmsg(socket.IPPROTO_IP, socket.IP_TTL, b"\x21\x00")
               + cmsg(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, b"", claimed=16))
    [record], _ = _engine_feed(control, b"", 10, 0)
    assert (record["ttl"], record["tos"]) == (0, 0)


def test_the_record_keeps_its_size():
    from udp_reader._core import _dtype
    dtype = _dtype()
    assert dtype.itemsize == 64
    assert (dtype.fields["ttl"][0].itemsize, dtype.fields["tos"][0].itemsize) == (1, 1)


@pytest.mark.parametrize("value", [1, "yes", None])
def test_ip_fields_must_be_a_bool(value):
    with pytest.raises(TypeError, match=f"ip_fields must be a bool, not {value!r}"):
        Reader("127.0.0.1:0", ip_fields=value)


@pytest.mark.parametrize("args, expected", [(("--ip-fields",), b"7 185"), ((), b"None None")])
def test_serve_passes_the_option_to_its_workers(tmp_path, args, expected):
    from server import Server
    server = Server("answer_handlers:ip_fields", *args, record_dir=str(tmp_path))
    try:
        server.status()
        with sender(*IPV4, 7, 0xb9) as c:
            c.settimeout(DEADLINE)
            c.connect(("127.0.0.1", server.port))
            c.send(b"x")
            answer = c.recv(100)
    finally:
        assert server.stop() == 0
    assert answer == expected
