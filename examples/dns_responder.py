"""A small DNS responder: every A query gets one fixed address, answered
from the address the query came to (a server on every address must not
answer from another one: resolvers drop such replies).

    python examples/dns_responder.py :5353 192.0.2.1
    dig @127.0.0.1 -p 5353 example.com A +short
    DNS_ANSWER=192.0.2.1 PYTHONPATH=examples \\
        udp-reader serve dns_responder:handle --bind :53 --workers 2

Other query types get an empty answer (NODATA), other opcodes NOTIMP, a
query without exactly one question FORMERR; responses and anything too
short to hold a header get nothing. The question is parsed with the
standard library only.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import sys
from typing import Optional, Tuple

import udp_reader

HEADER = struct.Struct("!HHHHHH")  # id, flags, qd, an, ns, ar counts
TYPE_A, CLASS_IN = 1, 1
FORMERR, NOTIMP = 1, 4
TTL = 60
QR, AA, RD = 0x8000, 0x0400, 0x0100
MAX_NAME = 255

ANSWER = ipaddress.IPv4Address(os.environ.get("DNS_ANSWER", "192.0.2.1")).packed


def question(message: bytes) -> Optional[Tuple[bytes, int, int]]:
    """The first question (its wire bytes, type, class), or None when it
    is malformed (a compressed name, a label past the end)."""
    at = HEADER.size
    while True:
        if at >= len(message):
            return None
        length = message[at]
        if length == 0:
            break
        if length & 0xC0 or at + 1 + length - HEADER.size > MAX_NAME:
            return None  # no compression in a question
        at += 1 + length
    end = at + 1 + 4
    if end > len(message):
        return None
    qtype, qclass = struct.unpack_from("!HH", message, at + 1)
    return message[HEADER.size:end], qtype, qclass


def respond(message: bytes) -> Optional[bytes]:
    """The response to one DNS message, or None for no response."""
    if len(message) < HEADER.size:
        return None
    ident, flags, qdcount, _, _, _ = HEADER.unpack_from(message)
    if flags & QR:
        return None  # a response: answering it could start a loop
    reply = QR | AA | (flags & (0x7800 | RD))  # the opcode and RD, copied
    if (flags >> 11) & 0xF:
        return HEADER.pack(ident, reply | NOTIMP, 0, 0, 0, 0)
    asked = question(message) if qdcount == 1 else None
    if asked is None:
        return HEADER.pack(ident, reply | FORMERR, 0, 0, 0, 0)
    wire, qtype, qclass = asked
    if (qtype, qclass) != (TYPE_A, CLASS_IN):
        return HEADER.pack(ident, reply, 1, 0, 0, 0) + wire
    # The answer names the question's name by a pointer to offset 12.
    record = struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, TTL, len(ANSWER)) + ANSWER
    return HEADER.pack(ident, reply, 1, 1, 0, 0) + wire + record


def handle(packet: udp_reader.Packet) -> Optional[bytes]:
    """For `udp-reader serve`: the return value is the reply."""
    return respond(packet.data)


def main() -> None:
    global ANSWER
    address = sys.argv[1] if len(sys.argv) > 1 else ":5353"
    if len(sys.argv) > 2:
        ANSWER = ipaddress.IPv4Address(sys.argv[2]).packed
    with udp_reader.Reader(address) as reader:
        host, port = reader.address
        print(f"answering on {udp_reader.sockets.format_address(host, port)}", flush=True)
        try:
            reader.run(udp_reader.answering(handle))
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
