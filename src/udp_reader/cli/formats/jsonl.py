"""One JSON object per line and packet; the payload in base64. TTL, TOS and
ECN appear when the reader reads them (ip_fields)."""

from __future__ import annotations

import base64
import json

from udp_reader import Packet
from udp_reader.cli.formats.base import Writer, arrival, interface_name


class JsonLines(Writer):
    def write(self, packet: Packet) -> None:
        host, port = packet.src
        record = {
            "time": arrival(packet), "src": host, "sport": port, "dst": packet.dst,
            "dport": self.local_port, "ifindex": packet.ifindex,
            "ifname": interface_name(packet.ifindex), "length": len(packet),
        }
        if packet.ttl is not None:
            record.update(ttl=packet.ttl, tos=packet.tos, ecn=packet.ecn)
        record["payload"] = base64.b64encode(packet.data).decode()
        self.stream.write(json.dumps(record).encode() + b"\n")
