"""Forwarding datagrams to a replicated stream (NATS JetStream): the record
format that packs a receive into one message, the publisher that sends
them and waits for the stream's acknowledgements."""

from udp_reader.forward.records import Unpacked, pack, unpack

__all__ = ["Unpacked", "pack", "unpack"]
