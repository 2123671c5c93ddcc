"""One line per packet: time, route, interface, length, first payload bytes."""

from __future__ import annotations

from udp_reader import Packet
from udp_reader.cli.formats.base import Writer, arrival, clock, interface_name, route

SHOWN = 16  # payload bytes shown


class Summary(Writer):
    show_ip_fields = False

    def write(self, packet: Packet) -> None:
        head = bytes(memoryview(packet)[:SHOWN])
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in head)
        more = "..." if len(packet) > SHOWN else ""
        ip = ""
        if self.show_ip_fields and packet.ttl is not None:
            ip = f"ttl={packet.ttl} tos=0x{packet.tos:02x} ecn={packet.ecn} "
        line = (f"{clock(arrival(packet))} {route(packet, self.local_port)} "
                f"{interface_name(packet.ifindex)} len={len(packet)} {ip}"
                f"{head.hex(' ')}{more} |{text}|\n")
        self.stream.write(line.encode())
