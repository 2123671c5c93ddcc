"""Would binding this address fail? Asked without binding it.

`serve` binds a slot's socket only once a worker is ready to read it: a
bound SO_REUSEPORT socket joins the port's group at once and gets its share
of the traffic, and a socket closed with datagrams queued loses them (so a
second instance that fails must never have joined). Yet a bind that cannot
succeed should be found before any handler code runs. So each reason
bind(2) gives is checked from what the kernel shows, never by binding the
port:

- EADDRNOTAVAIL (an address this host does not have): the same address on
  port 0, a port nobody sends to.
- EACCES (a port below net.ipv4.ip_unprivileged_port_start): that sysctl
  and CAP_NET_BIND_SERVICE in our effective capabilities.
- EADDRINUSE: the sockets on the port (/proc/net/udp, /proc/net/udp6) whose
  addresses overlap ours. One of another user's refuses us; one of ours
  only when it does not set SO_REUSEPORT. /proc shows neither that option
  nor IPV6_V6ONLY, so they are read from a duplicate of the holder's
  descriptor (pidfd_getfd(2), which needs the right to ptrace it: ours, or
  root's); closing the duplicate leaves the holder's socket as it was.

Where a fact cannot be known (no holder found, no right to look) the check
says nothing and the bind itself decides, as it did before.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
from typing import Dict, List, NamedTuple, Optional, Tuple

from udp_reader import served, sockets

_SYS_PIDFD_GETFD = 438      # the same number on every architecture
_CAP_NET_BIND_SERVICE = 10


def check(family: int, sockaddr: tuple) -> None:
    """Raise the OSError that binding a SO_REUSEPORT socket of `family` to
    `sockaddr` would raise (worded as sockets.bind() words it), when that
    can be known beforehand; return otherwise."""
    host, port = sockaddr[0], sockaddr[1]
    where = sockets.format_address(host, port)
    for code, why in (_address_missing(family, sockaddr), _privileged(port),
                      _in_use(family, host, port)):
        if code:
            text = os.strerror(code) + (f" ({why})" if why else "")
            raise OSError(code, f"cannot bind {where}: {text}")


# -- EADDRNOTAVAIL ---------------------------------------------------------------

def _address_missing(family: int, sockaddr: tuple) -> Tuple[int, str]:
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((sockaddr[0], 0, *sockaddr[2:]))
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                return e.errno, ""
    return 0, ""


# -- EACCES ----------------------------------------------------------------------

def _privileged(port: int) -> Tuple[int, str]:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            start = int(f.read())
        with open("/proc/self/status") as f:
            caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, ValueError, StopIteration):
        return 0, ""
    if 0 < port < start and not caps & (1 << _CAP_NET_BIND_SERVICE):
        return errno.EACCES, f"ports below {start} need root or CAP_NET_BIND_SERVICE"
    return 0, ""


# -- EADDRINUSE ------------------------------------------------------------------

class Side(NamedTuple):
    """An address as bind(2)'s conflict rule sees it: IPv4 (an IPv4-mapped
    IPv6 address too), IPv6, or IPv6's wildcard, which covers IPv4 as well
    unless IPV6_V6ONLY."""
    kind: str                   # "v4", "v6" or "any6"
    address: str
    v6only: Optional[bool] = None  # for "any6"; None: unknown


def _side(family: int, address: str, v6only: Optional[bool]) -> Side:
    if family == socket.AF_INET:
        return Side("v4", address)
    ip = ipaddress.IPv6Address(address.partition("%")[0])  # a scope is no part of it
    if ip.ipv4_mapped is not None:
        return Side("v4", str(ip.ipv4_mapped))
    if ip.is_unspecified:
        return Side("any6", "::", v6only)
    return Side("v6", str(ip))


def _overlap(a: Side, b: Side) -> Optional[bool]:
    """Do two bound addresses collide? None: it depends on an unknown
    IPV6_V6ONLY."""
    if a.kind == "any6" and b.kind == "any6":
        return True
    if "any6" in (a.kind, b.kind):
        wild, other = (a, b) if a.kind == "any6" else (b, a)
        if other.kind == "v6":
            return True
        return None if wild.v6only is None else not wild.v6only
    if a.kind != b.kind:
        return False
    if a.kind == "v4":
        return a.address == b.address or "0.0.0.0" in (a.address, b.address)
    return a.address == b.address


def _in_use(family: int, host: str, port: int) -> Tuple[int, str]:
    if port == 0:
        return 0, ""
    ours = _side(family, host or "::", v6only=False)  # sockets.py clears V6ONLY on [::]
    bound = served.bound(port)
    if not bound:
        return 0, ""
    holders = _holders({b.inode for b in bound if b.inode})
    refusing: List[str] = []
    for b in bound:
        holder = holders.get(b.inode)
        theirs = _side(b.family, str(b.host), holder.v6only if holder else None)
        if _overlap(ours, theirs) is not True:
            continue
        address = sockets.format_address(str(b.host), port)
        who = holder.name if holder else "a socket"
        if b.uid != os.geteuid():
            refusing.append(f"{who} of uid {b.uid} holds {address}")
        elif holder is None:
            return 0, ""  # ours, but whether it shares the port cannot be told
        elif not holder.reuseport:
            refusing.append(f"{who} holds {address} without SO_REUSEPORT")
        else:
            return 0, ""  # a group of ours that we join, as intended
    if refusing:
        return errno.EADDRINUSE, refusing[0]
    return 0, ""


class Holder(NamedTuple):
    name: str       # "socat (pid 1234)"
    reuseport: bool
    v6only: Optional[bool]


def _holders(inodes: set) -> Dict[int, Holder]:
    """What the processes holding these sockets set on them, where we may
    look (a duplicate of one of their descriptors)."""
    found: Dict[int, Holder] = {}
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        if len(found) == len(wanted):
            break
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                inode = wanted.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            if inode is not None and inode not in found:
                holder = _look(pid, int(fd))
                if holder is not None:
                    found[inode] = holder
    return found


def _look(pid: int, fd: int) -> Optional[Holder]:
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        dup = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if dup < 0:
            return None  # no right to look (ptrace access), or gone
        with socket.socket(fileno=dup) as sock:
            reuseport = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
            v6only = (bool(sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
                      if sock.family == socket.AF_INET6 else None)
        try:
            with open(f"/proc/{pid}/comm") as f:
                name = f"{f.read().strip()} (pid {pid})"
        except OSError:
            name = f"pid {pid}"
        return Holder(name, reuseport, v6only)
    except OSError:
        return None
    finally:
        os.close(pidfd)
