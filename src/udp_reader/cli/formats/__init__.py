"""What `udp-reader listen` can write: one Writer class per format.

A Writer is made with the output stream and the reader's local port, and
gets every delivered Packet through write(); close() finishes the output.
"""

from __future__ import annotations

from typing import Dict, Type

from udp_reader.cli.formats.base import Writer
from udp_reader.cli.formats.hexdump import HexDump
from udp_reader.cli.formats.jsonl import JsonLines
from udp_reader.cli.formats.pcap import Pcap
from udp_reader.cli.formats.raw import Raw
from udp_reader.cli.formats.summary import Summary

FORMATS: Dict[str, Type[Writer]] = {
    "summary": Summary,
    "hex": HexDump,
    "jsonl": JsonLines,
    "raw": Raw,
}

__all__ = ["FORMATS", "HexDump", "JsonLines", "Pcap", "Raw", "Summary", "Writer"]
