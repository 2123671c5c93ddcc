"""The classic BPF program a watcher's packet socket runs in the kernel:
keep UDP datagrams to one port (and address), IPv4 and IPv6, as they
arrive at this host; drop everything else before it is copied.

The socket is SOCK_DGRAM (cooked), so offset 0 is the IP header on every
kind of interface. IPv6 extension headers are not walked (as tcpdump's
`udp port N` does not); IPv4 fragments after the first carry no UDP header
and are dropped, the first is kept and shows the part it carries.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import List, Optional, Tuple, Union

# Instruction codes (linux/filter.h): class | size | mode.
LD_W_ABS, LD_H_ABS, LD_B_ABS, LD_H_IND = 0x20, 0x28, 0x30, 0x48
LDX_B_MSH = 0xb1  # X = 4 * (packet[k] & 0xf): the IPv4 header's length
JEQ, JSET, RET = 0x15, 0x45, 0x06
AD_PROTOCOL, AD_PKTTYPE = 0xfffff000, 0xfffff004  # SKF_AD_OFF + the ancillary field
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
PACKET_OTHERHOST, PACKET_OUTGOING = 3, 4
UDP = 17
FRAGMENT_OFFSET = 0x1fff
KEEP = 0x40000  # bytes kept of a packet: more than any IP datagram

Instruction = Tuple[int, Union[int, str], Union[int, str], int]
Host = Union[ipaddress.IPv4Address, ipaddress.IPv6Address, None]


def program(port: int, host: Host = None, *, ipv4: bool = True, ipv6: bool = True) -> bytes:
    """The filter for UDP to `port` at `host` (None: any address), as the
    struct sock_filter array SO_ATTACH_FILTER takes."""
    if host is not None:
        ipv4, ipv6 = host.version == 4, host.version == 6
    code: List[Union[Instruction, str]] = [
        # Another host's traffic (a promiscuous interface) and what this
        # host sends (loopback would show every datagram twice) are not
        # what a socket of the port would receive.
        (LD_W_ABS, 0, 0, AD_PKTTYPE),
        (JEQ, "drop", 0, PACKET_OTHERHOST),
        (JEQ, "drop", 0, PACKET_OUTGOING),
        (LD_W_ABS, 0, 0, AD_PROTOCOL),
        (JEQ, "v4" if ipv4 else "drop", 0, ETH_P_IP),
        (JEQ, "v6" if ipv6 else "drop", "drop", ETH_P_IPV6),
        "v4",
        (LD_B_ABS, 0, 0, 9),
        (JEQ, 0, "drop", UDP),
        (LD_H_ABS, 0, 0, 6),
        (JSET, "drop", 0, FRAGMENT_OFFSET),
    ]
    if isinstance(host, ipaddress.IPv4Address):
        code += [(LD_W_ABS, 0, 0, 16), (JEQ, 0, "drop", int(host))]
    code += [
        (LDX_B_MSH, 0, 0, 0),
        (LD_H_IND, 0, 0, 2),
        (JEQ, "keep", "drop", port),
        "v6",
        (LD_B_ABS, 0, 0, 6),
        (JEQ, 0, "drop", UDP),
    ]
    if isinstance(host, ipaddress.IPv6Address):
        words = struct.unpack("!4I", host.packed)
        for i, word in enumerate(words):
            code += [(LD_W_ABS, 0, 0, 24 + 4 * i), (JEQ, 0, "drop", word)]
    code += [
        (LD_H_ABS, 0, 0, 42),
        (JEQ, "keep", "drop", port),
        "keep",
        (RET, 0, 0, KEEP),
        "drop",
        (RET, 0, 0, 0),
    ]
    return assemble(code)


def assemble(code: List[Union[Instruction, str]]) -> bytes:
    """Instructions, with jumps to labels (strings) made relative."""
    labels = {}
    at = 0
    for item in code:
        if isinstance(item, str):
            labels[item] = at
        else:
            at += 1
    out = []
    at = 0
    for item in code:
        if isinstance(item, str):
            continue
        op, jt, jf, k = item
        jt = labels[jt] - at - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - at - 1 if isinstance(jf, str) else jf
        out.append(struct.pack("=HBBI", op, jt, jf, k))
        at += 1
    return b"".join(out)


def length(filter_code: bytes) -> int:
    return len(filter_code) // 8


def for_address(host: str, port: int) -> Tuple[bytes, Optional[Host]]:
    """The program for a listen-style address: "" or "::" is every address
    of both families (dual-stack), "0.0.0.0" every IPv4 address."""
    if not host or host == "::":
        return program(port), None
    address = ipaddress.ip_address(host)
    if address.is_unspecified:
        return program(port, ipv6=False), None
    return program(port, address), address
