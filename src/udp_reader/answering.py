"""Handlers that answer: what a per-packet handler returns is its reply."""

from __future__ import annotations

import functools
from typing import Any, Callable

from udp_reader._core import Packet


def answering(handler: Callable[[Packet], Any]) -> Callable[[Packet], None]:
    """Wrap a per-packet handler so that what it returns answers the packet
    (packet.reply()): bytes-like for one datagram, a list or tuple of them
    for several, None for no answer."""

    @functools.wraps(handler)
    def on_packet(packet: Packet) -> None:
        answer = handler(packet)
        if answer is None:
            return
        if isinstance(answer, (list, tuple)):
            for item in answer:
                packet.reply(item)
        else:
            packet.reply(answer)

    return on_packet
