"""Payloads only, back to back, as they came."""

from __future__ import annotations

from udp_reader import Packet
from udp_reader.cli.formats.base import Writer


class Raw(Writer):
    def write(self, packet: Packet) -> None:
        self.stream.write(memoryview(packet))
