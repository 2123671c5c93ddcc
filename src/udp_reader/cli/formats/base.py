"""The Writer interface and what the text formats share."""

from __future__ import annotations

import datetime
import functools
import socket
import time
from typing import BinaryIO

from udp_reader import Packet
from udp_reader.sockets import format_address


class Writer:
    """Writes packets to a binary stream."""

    def __init__(self, stream: BinaryIO, local_port: int) -> None:
        self.stream = stream
        self.local_port = local_port

    def write(self, packet: Packet) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.flush()


@functools.lru_cache(maxsize=64)
def interface_name(ifindex: int) -> str:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return str(ifindex)


def arrival(packet: Packet) -> float:
    """The kernel's receive time when the reader has timestamps, else now."""
    return packet.timestamp or time.time()


def clock(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).strftime("%H:%M:%S.%f")


def route(packet: Packet, local_port: int) -> str:
    """'src:port -> dst:port' as tcpdump users read it."""
    host, port = packet.src
    return f"{format_address(host, port)} -> {format_address(packet.dst, local_port)}"
