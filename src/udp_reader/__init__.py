"""udp_reader: receive UDP datagrams in batches with recvmmsg, in compiled code."""

from __future__ import annotations

from typing import Any, Callable

from udp_reader._core import Batch, Packet, Reader, ReceiveError, SendFailure, Stats
from udp_reader.answering import answering
from udp_reader.multicast import Membership
from udp_reader.options import ReaderOptions
from udp_reader.sockets import Address

__all__ = ["Batch", "Membership", "Packet", "Reader", "ReaderOptions", "ReceiveError",
           "SendFailure", "Stats",
           "answering", "listen"]
__version__ = "0.1.0"


def listen(address: Address, callback: Callable[[bytes], Any], **options: Any) -> None:
    """Bind `address` and call `callback(payload)` for every datagram, forever.

    The one-call form; options are Reader's. Ctrl-C ends it with
    KeyboardInterrupt.
    """
    with Reader(address, **options) as reader:
        reader.run(lambda packet: callback(packet.data))
