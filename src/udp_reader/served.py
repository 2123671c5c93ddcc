"""Who already serves a UDP port in this network namespace.

A socket bound beside them with SO_REUSEPORT joins their group and takes a
share of their datagrams (or all of them, bound to a more specific
address): `listen` asks here first. The kernel lists every UDP socket of
the namespace in /proc/net/udp and /proc/net/udp6.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import List, NamedTuple, Union

IP = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
TABLES = {"/proc/net/udp": socket.AF_INET, "/proc/net/udp6": socket.AF_INET6}
UNCONNECTED = 7  # TCP_CLOSE: bound, taking datagrams from anyone


class Socket(NamedTuple):
    """A UDP socket bound to the port, as the kernel lists it."""
    family: int
    host: IP
    uid: int
    inode: int
    connected: bool  # it takes only its peer's datagrams (still, it holds the port)


def _address(text: str) -> IP:
    """An address as /proc prints it: 32-bit words in the host's byte order."""
    raw = b"".join(struct.pack("=I", int(text[i:i + 8], 16)) for i in range(0, len(text), 8))
    return ipaddress.ip_address(raw)


def bound(port: int) -> List[Socket]:
    """Every UDP socket bound to `port`."""
    found = []
    for path, family in TABLES.items():
        try:
            with open(path) as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
        for row in rows:
            fields = row.split()
            host, _, number = fields[1].partition(":")
            if int(number, 16) == port:
                found.append(Socket(family, _address(host), int(fields[7]), int(fields[9]),
                                    int(fields[3], 16) != UNCONNECTED))
    return found


def listed(port: int) -> List[Socket]:
    """The unconnected UDP sockets bound to `port` (a connected one only
    takes its peer's datagrams)."""
    return [s for s in bound(port) if not s.connected]


def _v4(host: IP) -> Union[ipaddress.IPv4Address, None]:
    """The IPv4 address an IPv6 one stands for (::ffff:a.b.c.d), if any."""
    if isinstance(host, ipaddress.IPv6Address):
        return host.ipv4_mapped
    return host


def overlaps(ours: IP, theirs: IP) -> bool:
    """Whether a datagram to some address reaches both bindings: the same
    address, a wildcard of the same family, or the dual-stack [::] (a
    v6-only [::] is counted too: /proc does not tell them apart)."""
    if ours.is_unspecified and ours.version == 6 or theirs.is_unspecified and theirs.version == 6:
        return True
    if ours.version == theirs.version:
        return ours.is_unspecified or theirs.is_unspecified or ours == theirs
    a, b = _v4(ours), _v4(theirs)
    return a is not None and b is not None and (a == b or a.is_unspecified or b.is_unspecified)


def serving(host: str, port: int) -> List[Socket]:
    """The sockets that serve what a bind of (host, port) would receive;
    host "" is every address (dual-stack). Port 0 is never served."""
    if port == 0:
        return []
    ours = ipaddress.ip_address(host or "::")
    return [s for s in listed(port) if overlaps(ours, s.host)]
