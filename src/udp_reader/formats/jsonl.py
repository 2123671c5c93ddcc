"""One JSON object per line and packet; the payload in base64."""

from __future__ import annotations

import base64
import json

from udp_reader import Packet
from udp_reader.formats.base import Writer, arrival, interface_name


class JsonLines(Writer):
    def write(self, packet: Packet) -> None:
        host, port = packet.src
        record = {
            "time": arrival(packet), "src": host, "sport": port, "dst": packet.dst,
            "dport": self.local_port, "ifindex": packet.ifindex,
            "ifname": interface_name(packet.ifindex), "length": len(packet),
            "payload": base64.b64encode(packet.data).decode(),
        }
        self.stream.write(json.dumps(record).encode() + b"\n")
