"""Forwarding datagrams to a replicated stream (NATS JetStream): the record
format that packs a receive into one message, and the publisher that sends
the messages and waits for the stream's acknowledgements."""

from udp_reader.forward.publisher import ForwardStats, Publisher
from udp_reader.forward.records import Unpacked, pack, unpack
from udp_reader.forward.target import Target, TargetError

__all__ = ["ForwardStats", "Publisher", "Target", "TargetError", "Unpacked", "pack", "unpack"]
