"""A summary line per packet (with TTL, TOS and ECN), then its payload as
`hexdump -C` shows it."""

from __future__ import annotations

from udp_reader import Packet
from udp_reader.cli.formats.summary import Summary


def hexdump(data: bytes) -> str:
    """What `hexdump -C` prints: nothing for no data, and a row equal to
    the one before shown once as "*"."""
    if not data:
        return ""
    lines = []
    previous = None
    for offset in range(0, len(data), 16):
        row = data[offset:offset + 16]
        if row == previous and len(row) == 16:
            if lines[-1] != "*\n":
                lines.append("*\n")
            continue
        previous = row
        left, right = row[:8].hex(" "), row[8:].hex(" ")
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"{offset:08x}  {left:<23}  {right:<23}  |{text}|\n")
    lines.append(f"{len(data):08x}\n")
    return "".join(lines)


class HexDump(Summary):
    show_ip_fields = True

    def write(self, packet: Packet) -> None:
        super().write(packet)
        self.stream.write(hexdump(packet.data).encode())
