"""pcap files that tcpdump, tshark and Wireshark open.

The kernel hands a UDP socket only payloads and metadata, so every record
gets IP and UDP headers made from the packet's addresses, ports, length and,
when the reader reads them (ip_fields), its TTL and TOS; else TTL 64 and TOS
0 (link type RAW: the record starts at the IP header). Timestamps are in
nanoseconds.
"""

from __future__ import annotations

import socket
import struct

from udp_reader import Packet
from udp_reader.cli.formats.base import Writer, arrival

MAGIC_NANOSECONDS = 0xA1B23C4D
LINKTYPE_RAW = 101
SNAPLEN = 65535 + 48


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_udp_headers(packet: Packet, local_port: int, payload: bytes) -> bytes:
    src_host, src_port = packet.src
    udp_length = 8 + len(payload)
    ttl = 64 if packet.ttl is None else packet.ttl
    tos = packet.tos or 0
    if packet.family == socket.AF_INET6:
        src = socket.inet_pton(socket.AF_INET6, src_host)
        dst = socket.inet_pton(socket.AF_INET6, packet.dst)
        pseudo = src + dst + struct.pack("!I3xB", udp_length, socket.IPPROTO_UDP)
        udp = struct.pack("!HHHH", src_port, local_port, udp_length, 0)
        udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp + payload) or 0xFFFF)
        ip = struct.pack("!IHBB", 6 << 28 | tos << 20, udp_length, socket.IPPROTO_UDP,
                         ttl) + src + dst
        return ip + udp
    src = socket.inet_aton(src_host)
    dst = socket.inet_aton(packet.dst)
    udp = struct.pack("!HHHH", src_port, local_port, udp_length, 0)  # 0: no checksum
    header = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + udp_length, 0, 0x4000, ttl,
                         socket.IPPROTO_UDP, 0, src, dst)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + udp


class Pcap(Writer):
    def __init__(self, stream, local_port: int) -> None:
        super().__init__(stream, local_port)
        stream.write(struct.pack("=IHHiIII", MAGIC_NANOSECONDS, 2, 4, 0, 0, SNAPLEN,
                                 LINKTYPE_RAW))

    def write(self, packet: Packet) -> None:
        payload = packet.data
        frame = ip_udp_headers(packet, self.local_port, payload) + payload
        nanoseconds = packet.timestamp_ns or int(arrival(packet) * 1e9)
        seconds, fraction = divmod(nanoseconds, 1_000_000_000)
        self.stream.write(struct.pack("=IIII", seconds, fraction, len(frame), len(frame)))
        self.stream.write(frame)
