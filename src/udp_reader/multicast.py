"""Multicast group membership: the notation, joining and leaving.

A membership is a group, optionally one source (source-specific multicast,
IGMPv3/MLDv2 INCLUDE mode) and an interface. As text:

    [SOURCE>]GROUP[@INTERFACE]

    239.1.2.3                any source, on the interface the kernel routes the group to
    239.1.2.3@eth0           on eth0 (a name, an index such as @2, or for IPv4 an address)
    10.0.0.5>232.1.1.1@eth0  only what 10.0.0.5 sends to 232.1.1.1, on eth0
    ff15::1234@*             on every interface that is up and multicast-capable

Memberships belong to the socket: every holder of it (a duplicate, a worker,
a new master) shares them, and they end when its last descriptor closes.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import socket
import struct
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Set, Tuple, Union

Interface = Union[None, int, str]

ALL_INTERFACES = "*"

# Linux ABI values the socket module does not name everywhere.
IP_ADD_MEMBERSHIP = 35
IP_DROP_MEMBERSHIP = 36
IP_ADD_SOURCE_MEMBERSHIP = 39
IP_DROP_SOURCE_MEMBERSHIP = 40
MCAST_JOIN_SOURCE_GROUP = 46
MCAST_LEAVE_SOURCE_GROUP = 47
IPV6_JOIN_GROUP = 20
IPV6_LEAVE_GROUP = 21
_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1
_IFF_MULTICAST = 0x1000
# struct sockaddr_storage is aligned like a pointer (group_source_req pads to it).
_SS_ALIGN = struct.calcsize("P")


class Membership(NamedTuple):
    """A group joined (or to join): any source when `source` is None; on
    `interface` (a name, an index, an IPv4 address, "*" for every
    multicast-capable interface, or None for the kernel's choice)."""

    group: str
    source: Optional[str] = None
    interface: Interface = None

    def __str__(self) -> str:
        text = self.group if self.source is None else f"{self.source}>{self.group}"
        return text if self.interface is None else f"{text}@{self.interface}"

    def describe(self) -> str:
        """For a log line: '232.1.1.1 from 10.0.0.5 on eth0'."""
        text = self.group if self.source is None else f"{self.group} from {self.source}"
        if self.interface == ALL_INTERFACES:
            return f"{text} on every multicast interface"
        return text + (_where(self.interface) if self.interface is not None else "")


def parse(spec: Union[str, Membership]) -> Membership:
    """A Membership from its notation, [SOURCE>]GROUP[@INTERFACE]; checked
    as far as can be without a socket (interfaces are looked up on join)."""
    if isinstance(spec, Membership):
        return check(*spec)
    if not isinstance(spec, str):
        raise TypeError(f"a membership must be a str like '239.1.2.3@eth0', not {spec!r}")
    rest, at, interface = spec.strip().rpartition("@")
    if not at:
        rest, interface = interface, ""
    source, arrow, group = rest.rpartition(">")
    if at and not interface:
        raise ValueError(f"{spec!r}: name an interface after '@' (a name, an index, "
                         "an IPv4 address or *)")
    if arrow and not source:
        raise ValueError(f"{spec!r}: name a source before '>'")
    if not group:
        raise ValueError(f"{spec!r}: no group (the notation is [SOURCE>]GROUP[@INTERFACE])")
    iface: Interface = int(interface) if interface.isdigit() else (interface or None)
    return check(group, source or None, iface)


def parse_all(specs: Iterable[str]) -> Tuple[Membership, ...]:
    """Memberships from their notation; a wrong one is a ValueError that
    starts with it: "239.1.2.3@no-such0: interface 'no-such0' ..."."""
    found = []
    for spec in specs:
        try:
            found.append(parse(spec))
        except ValueError as e:
            raise ValueError(f"{spec}: {e}") from None
    return tuple(found)


def check(group: object, source: object = None, interface: object = None) -> Membership:
    """The arguments of a join or leave, checked and in canonical form;
    errors name the argument."""
    group_ip = _address(group, "group")
    if not group_ip.is_multicast:
        raise ValueError(f"group {group!r} is not a multicast address "
                         f"({'224.0.0.0/4' if group_ip.version == 4 else 'ff00::/8'})")
    source_text = None
    if source is not None:
        source_ip = _address(source, "source")
        if source_ip.version != group_ip.version:
            raise ValueError(f"source {source!r} is IPv{source_ip.version}, but group "
                             f"{group!r} is IPv{group_ip.version}")
        if source_ip.is_multicast or source_ip.is_unspecified:
            raise ValueError(f"source {source!r} must be a sender's unicast address")
        source_text = str(source_ip)
    if interface is not None:
        if isinstance(interface, bool) or not isinstance(interface, (int, str)):
            raise TypeError(f"interface must be a name, an index, an IPv4 address or "
                            f"'*', not {interface!r}")
        if isinstance(interface, str) and interface.isdigit():
            interface = int(interface)
        if isinstance(interface, int) and not 0 < interface < 1 << 32:
            raise ValueError(f"interface index must be positive, not {interface}")
        if isinstance(interface, str):
            try:
                ip = ipaddress.ip_address(interface.strip("[]"))
            except ValueError:
                ip = None
            if ip is not None and (ip.version == 6 or group_ip.version == 6):
                raise ValueError(f"interface {interface!r}: name the interface of an "
                                 f"IPv{group_ip.version} group by name or index"
                                 + (" (or IPv4 address)" if group_ip.version == 4 else ""))
    return Membership(str(group_ip), source_text, interface)


def _address(value: object, name: str) -> Union[ipaddress.IPv4Address, ipaddress.IPv6Address]:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be an IP address str, not {value!r}")
    try:
        ip = ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        raise ValueError(f"{name} {value!r} is not a numeric IP address") from None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip


def interfaces(sock: socket.socket) -> List[Tuple[int, str]]:
    """(index, name) of every interface that is up and multicast-capable, in
    the socket's network namespace."""
    found = []
    for index, name in socket.if_nameindex():
        try:
            raw = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, struct.pack("16s24x", name.encode()))
        except OSError:
            continue  # gone since it was listed
        flags = struct.unpack_from("16sH", raw)[1]
        if flags & _IFF_UP and flags & _IFF_MULTICAST:
            found.append((index, name))
    return found


# Where a membership is: an interface index (0: the kernel's choice) or,
# for IPv4, an interface's address.
_Place = Union[int, str]


def _where(place: _Place) -> str:
    if place == 0:
        return ""
    if isinstance(place, int):
        try:
            return f" on {socket.if_indextoname(place)}"
        except OSError:
            return f" on interface {place}"
    return f" on {place}"


class Memberships:
    """The groups one socket joined through this object.

    The kernel keeps memberships per socket but cannot tell which were for
    any source: the record kept here refuses a source-specific join that
    the kernel would take silently as narrowing an any-source membership.
    `bound_host` is where the socket is (or will be) bound, when not yet.
    """

    def __init__(self, sock: socket.socket, bound_host: Optional[str] = None) -> None:
        self.sock = sock
        self.bound_host = bound_host
        # (group, place) -> None for any source, else the sources joined
        self._joined: Dict[Tuple[str, _Place], Optional[Set[str]]] = {}

    def __iter__(self) -> Iterator[Membership]:
        for (group, place), sources in self._joined.items():
            interface = None if place == 0 else place
            if sources is None:
                yield Membership(group, None, interface)
            else:
                for source in sorted(sources):
                    yield Membership(group, source, interface)

    def join(self, group: str, *, interface: Interface = None, source: Optional[str] = None,
             rejoin: bool = False) -> List[Membership]:
        """Join `group`; with `rejoin`, one the socket already has is no
        error (an inherited socket keeps its memberships). Returns what was
        joined, one per interface."""
        m = check(group, source, interface)
        family = self._family(m.group)
        done: List[_Place] = []
        try:
            for place in self._places(m, family):
                if self._join(m, family, place, rejoin):
                    done.append(place)
        except BaseException:
            for place in done:  # all or nothing
                try:
                    self._apply(False, family, m.group, m.source, place)
                except OSError:
                    pass
                self._forget(m, place)
            raise
        return [Membership(m.group, m.source, None if p == 0 else p) for p in done]

    def leave(self, group: str, *, interface: Interface = None,
              source: Optional[str] = None) -> List[Membership]:
        """Leave `group` (from `source` only, when given; without a source,
        every source joined). interface="*" leaves it wherever joined here."""
        m = check(group, source, interface)
        family = self._family(m.group)
        if m.interface == ALL_INTERFACES:
            places = [p for (g, p), sources in self._joined.items() if g == m.group and (
                m.source is None or (sources is not None and m.source in sources))]
            if not places:
                raise ValueError(f"group {m.group} is not joined"
                                 f"{f' from {m.source}' if m.source else ''}")
        else:
            places = [self._place(m, family)]
        left = []
        for place in places:
            self._leave(m, family, place)
            left.append(Membership(m.group, m.source, None if place == 0 else place))
        return left

    # -- one interface -------------------------------------------------------------

    def _join(self, m: Membership, family: int, place: _Place, rejoin: bool) -> bool:
        key = (m.group, place)
        where = _where(place)
        if key in self._joined:
            sources = self._joined[key]
            if sources is None and m.source is not None:
                raise ValueError(
                    f"source {m.source}: group {m.group} is joined for any source{where}; "
                    "a source-specific join would narrow it to this source: leave it first")
            if sources is not None and m.source is None:
                raise ValueError(f"group {m.group} is joined source-specific{where} (from "
                                 f"{', '.join(sorted(sources))}): leave it first")
            if sources is None or m.source in sources:
                if rejoin:
                    return False
                raise ValueError(self._joined_text(m, where))
        try:
            self._apply(True, family, m.group, m.source, place)
        except OSError as e:
            already = errno.EADDRINUSE if m.source is None else errno.EADDRNOTAVAIL
            if e.errno == already and rejoin:
                self._remember(m, place)
                return False
            if e.errno == already:
                raise ValueError(self._joined_text(m, where)) from None
            raise self._error(e, m, place) from None
        self._remember(m, place)
        return True

    def _leave(self, m: Membership, family: int, place: _Place) -> None:
        key = (m.group, place)
        where = _where(place)
        sources = self._joined.get(key, set())
        if sources is None and m.source is not None:
            raise ValueError(f"source {m.source}: group {m.group} is joined for any "
                             f"source{where}; leave it without a source")
        if key in self._joined and m.source is not None and m.source not in (sources or ()):
            raise ValueError(f"group {m.group} is not joined from {m.source}{where}")
        try:
            self._apply(False, family, m.group, m.source, place)
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                raise ValueError(f"group {m.group} is not joined"
                                 f"{f' from {m.source}' if m.source else ''}{where}") from None
            raise self._error(e, m, place) from None
        self._forget(m, place)

    @staticmethod
    def _joined_text(m: Membership, where: str) -> str:
        return f"group {m.group} is already joined{f' from {m.source}' if m.source else ''}{where}"

    def _remember(self, m: Membership, place: _Place) -> None:
        if m.source is None:
            self._joined[(m.group, place)] = None
        else:
            sources = self._joined.setdefault((m.group, place), set())
            assert sources is not None
            sources.add(m.source)

    def _forget(self, m: Membership, place: _Place) -> None:
        key = (m.group, place)
        sources = self._joined.get(key)
        if m.source is None or sources is None:
            self._joined.pop(key, None)
        else:
            sources.discard(m.source)
            if not sources:  # the kernel leaves the group with its last source
                del self._joined[key]

    def _error(self, e: OSError, m: Membership, place: _Place) -> Exception:
        if e.errno == errno.ENODEV:
            if place == 0:
                return ValueError(f"group {m.group}: no route picks an interface for it; "
                                  "name one (interface=..., or GROUP@INTERFACE)")
            if isinstance(place, str):
                return ValueError(f"interface {place!r}: no interface has this address")
            return ValueError(f"interface {m.interface!r} cannot join IPv{self._version(m)} "
                              "groups (no such device)")
        if e.errno == errno.ENOBUFS:
            limit = ("net.ipv4.igmp_max_msf" if m.source else "net.ipv4.igmp_max_memberships") \
                if self._version(m) == 4 else "net.ipv6.mld_max_msf"
            return OSError(e.errno, f"group {m.group}: the socket has as many "
                                    f"{'sources' if m.source else 'groups'} as the kernel "
                                    f"allows (sysctl {limit})")
        verb = "join" if e.errno != errno.EADDRNOTAVAIL else "leave"
        return OSError(e.errno, f"{verb} group {m.group}{_where(place)}: {e.strerror}")

    @staticmethod
    def _version(m: Membership) -> int:
        return 6 if ":" in m.group else 4

    # -- the socket ------------------------------------------------------------------

    def _family(self, group: str) -> int:
        family = socket.AF_INET6 if ":" in group else socket.AF_INET
        sock = self.sock
        if sock.family == socket.AF_INET and family == socket.AF_INET6:
            raise ValueError(f"group {group} is IPv6, but the socket is IPv4")
        if sock.family == socket.AF_INET6 and family == socket.AF_INET and \
                sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
            raise ValueError(f"group {group} is IPv4, but the socket takes IPv6 only "
                             "(bind to :PORT for both)")
        bound = self.bound_host if self.bound_host is not None else sock.getsockname()[0]
        bound = bound.strip("[]")
        if bound not in ("", "0.0.0.0", "::"):
            if _address(bound, "bound address") != _address(group, "group"):
                raise ValueError(f"group {group}: the socket is bound to {bound}, where no "
                                 "datagram to a group arrives; bind to every address "
                                 "(:PORT) or to the group")
        return family

    def _places(self, m: Membership, family: int) -> List[_Place]:
        if m.interface == ALL_INTERFACES:
            places: List[_Place] = [index for index, _ in interfaces(self.sock)]
            if not places:
                raise ValueError("interface '*': no interface is up and multicast-capable")
            return places
        return [self._place(m, family)]

    def _place(self, m: Membership, family: int) -> _Place:
        interface = m.interface
        if interface is None:
            return 0
        if isinstance(interface, int):
            try:
                socket.if_indextoname(interface)
            except OSError:
                raise ValueError(f"interface {interface} does not exist") from None
            return interface
        if interface == ALL_INTERFACES:
            raise ValueError("interface '*' names every interface: join or leave one at a time")
        try:
            ipaddress.IPv4Address(interface)
            return interface  # the kernel finds the interface with this address
        except ValueError:
            pass
        try:
            return socket.if_nametoindex(interface)
        except OSError:
            raise ValueError(f"interface {interface!r} does not exist") from None

    def _apply(self, join: bool, family: int, group: str, source: Optional[str],
               place: _Place) -> None:
        packed_group = socket.inet_pton(family, group)
        index = place if isinstance(place, int) else 0
        address = socket.inet_aton(place) if isinstance(place, str) else bytes(4)
        if source is None:
            if family == socket.AF_INET:
                level, option = socket.IPPROTO_IP, IP_ADD_MEMBERSHIP if join else IP_DROP_MEMBERSHIP
                value = struct.pack("4s4si", packed_group, address, index)  # ip_mreqn
            else:
                level, option = socket.IPPROTO_IPV6, IPV6_JOIN_GROUP if join else IPV6_LEAVE_GROUP
                value = struct.pack("16sI", packed_group, index)  # ipv6_mreq
        elif family == socket.AF_INET and isinstance(place, str):
            # By address: only ip_mreq_source takes one.
            level = socket.IPPROTO_IP
            option = IP_ADD_SOURCE_MEMBERSHIP if join else IP_DROP_SOURCE_MEMBERSHIP
            value = struct.pack("4s4s4s", packed_group, address,
                                socket.inet_pton(family, source))
        else:
            level = socket.IPPROTO_IP if family == socket.AF_INET else socket.IPPROTO_IPV6
            option = MCAST_JOIN_SOURCE_GROUP if join else MCAST_LEAVE_SOURCE_GROUP
            value = (struct.pack("I", index).ljust(_SS_ALIGN, b"\0")  # group_source_req
                     + _storage(family, packed_group)
                     + _storage(family, socket.inet_pton(family, source)))
        self.sock.setsockopt(level, option, value)


def _storage(family: int, packed: bytes) -> bytes:
    """A struct sockaddr_storage holding a sockaddr_in or sockaddr_in6, port 0."""
    if family == socket.AF_INET:
        raw = struct.pack("=H2x4s", family, packed)
    else:
        raw = struct.pack("=H2xI16sI", family, 0, packed, 0)
    return raw.ljust(128, b"\0")
