"""Address parsing, UDP socket creation with the options the engine needs,
and shedding a socket out of its SO_REUSEPORT group."""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from typing import List, Tuple, Union

from udp_reader._constants import (ASYNC_ERRORS, CONTROL_SIZE, GRO_BUFFER, SO_RXQ_OVFL,
                                   UDP_GRO, UDP_SEGMENT)

Address = Union[str, int, Tuple[str, int]]

log = logging.getLogger("udp_reader")

# Linux ABI values, for the ones the socket module does not name (those the
# compiled core uses too come from its header, above).
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
IP_RECVTOS = getattr(socket, "IP_RECVTOS", 13)
IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_RECVTCLASS = getattr(socket, "IPV6_RECVTCLASS", 66)
IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)
IPV6_MULTICAST_ALL = getattr(socket, "IPV6_MULTICAST_ALL", 29)
_SK_MEMINFO_DROPS = 8


def parse_address(address: Address) -> Tuple[str, int]:
    """Split an address into (host, port); host "" means every address.

    Accepts "host:port", ":port", "[v6]:port", a bare port, or (host, port).
    """
    if isinstance(address, tuple):
        if len(address) != 2:
            raise ValueError(f"address must be (host, port), not {address!r}")
        name, number = address
        if not isinstance(name, str):
            raise TypeError(f"address host must be str, not {type(name).__name__}")
        return name.strip("[]"), _port(number, address)
    if isinstance(address, int) and not isinstance(address, bool):
        return "", _port(address, address)
    if not isinstance(address, str):
        raise TypeError(
            f"address must be str, int or (host, port), not {type(address).__name__}")
    host, sep, port = address.rpartition(":")
    if not sep:
        raise ValueError(f"address {address!r} has no port (use host:port or :port)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"address {address!r}: put an IPv6 host in brackets, [::1]:port")
    return host, _port(port, address)


def _port(port: object, address: object) -> int:
    try:
        value = int(port)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValueError(f"address {address!r}: port {port!r} is not a number") from None
    if not 0 <= value <= 65535:
        raise ValueError(f"address {address!r}: port {value} is outside 0..65535")
    return value


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _resolve(host: str, port: int) -> Tuple[int, tuple]:
    """The family and sockaddr to bind; no host means dual-stack [::]."""
    if not host:
        if socket.has_ipv6:
            return socket.AF_INET6, ("::", port)
        return socket.AF_INET, ("0.0.0.0", port)
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM,
                                   0, socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise socket.gaierror(e.errno, f"cannot resolve {host!r}: {e.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def open_socket(address: Address, *, reuseport: bool = True,
                rcvbuf: int | None = None) -> socket.socket:
    """A bound UDP socket for `address`, ready for the engine."""
    sock, sockaddr = unbound_socket(address, reuseport=reuseport, rcvbuf=rcvbuf)
    try:
        bind(sock, sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def unbound_socket(address: Address, *, reuseport: bool = True,
                   rcvbuf: int | None = None) -> Tuple[socket.socket, tuple]:
    """A UDP socket with every option set, and the sockaddr to bind it to:
    a socket joins its SO_REUSEPORT group, and gets traffic, only once bound."""
    host, port = parse_address(address)
    family, sockaddr = _resolve(host, port)
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as e:
        if family == socket.AF_INET6 and not host and e.errno == errno.EAFNOSUPPORT:
            family, sockaddr = socket.AF_INET, ("0.0.0.0", port)
            sock = socket.socket(family, socket.SOCK_DGRAM)
        else:
            raise
    try:
        if family == socket.AF_INET6 and sockaddr[0] == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if rcvbuf is not None:
            set_rcvbuf(sock, rcvbuf)
        enable_metadata(sock)
    except BaseException:
        sock.close()
        raise
    return sock, sockaddr


def bind(sock: socket.socket, sockaddr: tuple) -> None:
    """Bind, with an error that names the address."""
    try:
        sock.bind(sockaddr)
    except OSError as e:
        where = format_address(sockaddr[0], sockaddr[1])
        raise OSError(e.errno, f"cannot bind {where}: {e.strerror}") from None


def check_udp(sock: socket.socket) -> None:
    """Refuse anything that is not an IPv4/IPv6 datagram socket."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"socket family must be AF_INET or AF_INET6, not {sock.family!r}")
    if sock.type != socket.SOCK_DGRAM:
        raise ValueError(f"socket type must be SOCK_DGRAM, not {sock.type!r}")


def enable_metadata(sock: socket.socket) -> None:
    """Ask for the destination address, interface and drop count of every
    packet, and only the multicast groups this socket joins."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    own_groups_only(sock)


def own_groups_only(sock: socket.socket) -> None:
    """Turn off IP_MULTICAST_ALL (and IPV6_MULTICAST_ALL): by default a socket
    bound to every address gets the datagrams of every group any socket of
    the host joined on its port, not only its own."""
    options = [(socket.IPPROTO_IP, IP_MULTICAST_ALL)]  # IPv4 on a dual-stack socket too
    if sock.family == socket.AF_INET6:
        options.append((socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL))
    for level, option in options:
        try:
            sock.setsockopt(level, option, 0)
        except OSError as e:  # IPV6_MULTICAST_ALL came with Linux 4.20
            if e.errno not in (errno.ENOPROTOOPT, errno.EINVAL):
                raise


def enable_ip_fields(sock: socket.socket) -> None:
    """Ask for the TTL (hop limit) and TOS (traffic class) of every packet;
    a dual-stack socket needs the IPv4 options for its IPv4 datagrams."""
    sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    sock.setsockopt(socket.IPPROTO_IP, IP_RECVTOS, 1)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVTCLASS, 1)


def enable_timestamps(sock: socket.socket) -> None:
    """Ask for the kernel's receive time of every packet (SO_TIMESTAMPNS)."""
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def enable_gro(sock: socket.socket) -> bool:
    """Ask for merged receives (UDP_GRO); False, with a warning, where the
    kernel refuses (before Linux 5.0)."""
    try:
        sock.setsockopt(socket.IPPROTO_UDP, UDP_GRO, 1)
    except OSError as e:
        log.warning("UDP_GRO unavailable (%s); receiving without it", e.strerror)
        return False
    return True


def set_rcvbuf(sock: socket.socket, size: int, *, at_least: bool = False) -> int:
    """Set the receive buffer, past net.core.rmem_max where permitted
    (SO_RCVBUFFORCE: root or CAP_NET_ADMIN); with `at_least`, only ever
    raise it, so a buffer someone set larger (systemd's ReceiveBuffer=) stays.

    Returns the size the kernel reports, which is twice what was asked for:
    the kernel doubles it to cover its own bookkeeping. Logs one warning per
    process when the kernel grants less.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ValueError(f"rcvbuf must be a positive int, not {size!r}")
    current = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if at_least and current >= 2 * size:
        return current
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        # SO_RCVBUF is capped at rmem_max: it could shrink a buffer that
        # someone with the privilege made larger.
        if not at_least or 2 * min(size, _rmem_max()) > current:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if granted < 2 * size:
        _warn_capped(size, granted)
    return granted


_warned_capped = False


def _warn_capped(size: int, granted: int) -> None:
    global _warned_capped
    if not _warned_capped:
        _warned_capped = True
        log.warning("receive buffer: asked for %d bytes, the kernel granted %d "
                    "(net.core.rmem_max caps it without CAP_NET_ADMIN); raise the cap "
                    "with: sysctl -w net.core.rmem_max=%d", size, granted // 2, size)


def _rmem_max() -> int:
    """The cap SO_RCVBUF applies; 0 when unknown, so nothing gets shrunk."""
    try:
        with open("/proc/sys/net/core/rmem_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def meminfo(sock: socket.socket) -> Tuple[int, ...]:
    """The socket's SO_MEMINFO counters (see sock_diag(7)): queued bytes at
    index 0, the receive buffer at 1, drops at 8; empty where unsupported."""
    size = 4 * (_SK_MEMINFO_DROPS + 1)
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, size)
    except OSError:
        return ()
    return struct.unpack(f"{len(raw) // 4}I", raw)


def kernel_drops(sock: socket.socket) -> int:
    """The socket's cumulative drop counter (the value SO_RXQ_OVFL reports)."""
    info = meminfo(sock)
    return info[_SK_MEMINFO_DROPS] if len(info) > _SK_MEMINFO_DROPS else 0


# Receives discard_queue() makes at most: a sender faster than us must not
# keep it reading forever.
_DISCARD_LIMIT = 1 << 20


def discard_queue(sock: socket.socket) -> int:
    """Read and throw away every datagram queued on `sock`, without waiting;
    returns how many datagrams that was (a merged UDP_GRO receive counts
    each of its segments). For counting what a close would free silently."""
    if sock.gettimeout() in (None, 0.0):
        return _discard(sock)
    # A socket with a timeout waits for readability before it receives; a
    # non-blocking duplicate does not (its file is non-blocking already).
    with socket.socket(fileno=os.dup(sock.fileno())) as dup:
        dup.setblocking(False)
        return _discard(dup)


def _discard(sock: socket.socket) -> int:
    buffer = bytearray(GRO_BUFFER)  # a merged receive or the largest datagram
    count = 0
    for _ in range(_DISCARD_LIMIT):
        try:
            length, ancdata, _, _ = sock.recvmsg_into(
                [buffer], CONTROL_SIZE, socket.MSG_DONTWAIT | socket.MSG_TRUNC)
        except BlockingIOError:
            break
        except OSError as e:  # an ICMP error left pending by a send, not a datagram
            if e.errno not in ASYNC_ERRORS:
                raise
            continue
        count += _segments(length, ancdata)
    return count


def _segments(length: int, ancdata: List[Tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_UDP and kind == UDP_GRO and len(data) >= 4:
            (segment,) = struct.unpack("i", data[:4])
            if 0 < segment < length:
                return -(-length // segment)
    return 1


# -- shedding: leaving the SO_REUSEPORT group without losing the queue ---------

def shed(sock: socket.socket) -> socket.socket:
    """Connect `sock` to a throwaway loopback peer of our own, so the kernel
    stops queueing new datagrams on it while those queued stay readable
    (closing would free them). Returns the peer: keep it open until `sock`
    is closed, so no stranger can take its port and send to us."""
    if sock.family == socket.AF_INET6:
        try:
            peer = _bound(socket.AF_INET6, "::1")
            target = peer.getsockname()[:2]
        except OSError:  # IPv6 loopback missing: a mapped IPv4 peer works too
            peer = _bound(socket.AF_INET, "127.0.0.1")
            target = ("::ffff:127.0.0.1", peer.getsockname()[1])
    else:
        peer = _bound(socket.AF_INET, "127.0.0.1")
        target = peer.getsockname()
    try:
        sock.connect(target)
    except BaseException:
        peer.close()
        raise
    return peer


def _bound(family: int, host: str) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.bind((host, 0))
    except BaseException:
        s.close()
        raise
    return s


def is_shed(sock: socket.socket) -> bool:
    """True once `sock` has been connected (shed) by any holder of it."""
    try:
        sock.getpeername()
    except OSError:
        return False
    return True
