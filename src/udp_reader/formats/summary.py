"""One line per packet: time, route, interface, length, first payload bytes."""

from __future__ import annotations

from udp_reader import Packet
from udp_reader.formats.base import Writer, arrival, clock, interface_name, route

SHOWN = 16  # payload bytes shown


class Summary(Writer):
    def write(self, packet: Packet) -> None:
        head = bytes(memoryview(packet)[:SHOWN])
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in head)
        more = "..." if len(packet) > SHOWN else ""
        line = (f"{clock(arrival(packet))} {route(packet, self.local_port)} "
                f"{interface_name(packet.ifindex)} len={len(packet)} "
                f"{head.hex(' ')}{more} |{text}|\n")
        self.stream.write(line.encode())
