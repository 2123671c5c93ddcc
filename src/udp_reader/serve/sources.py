"""Where the master's sockets come from, and the slots they make:

- bound here from --bind (one per slot, or one for all with --shared);
- passed by a service manager (systemd socket activation): external, one
  shared by every slot;
- inherited across exec from the master we upgrade from (USR2), each with
  its slot number, or
- taken from a running master over its handoff socket (--takeover).

upgrade.py carries them between masters; --join memberships are made here
on the shared socket and travel with it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from typing import List, Optional

from udp_reader import multicast, sockets
from udp_reader.errors import describe
from udp_reader.serve import upgrade
from udp_reader.serve.config import Config
from udp_reader.serve.errors import StartError
from udp_reader.serve.listeners import Listener
from udp_reader.serve.slots import Slot

log = logging.getLogger("udp_reader")


@dataclasses.dataclass
class Opened:
    slots: List[Slot]
    shared: bool                  # every slot reads one socket
    target: int                   # workers to run
    port: Optional[int] = None    # chosen already (sockets handed to us)
    predecessor: Optional[upgrade.Predecessor] = None  # the master we upgrade from
    peer: Optional[socket.socket] = None  # --takeover: open while the other master lives


def open_slots(config: Config) -> Opened:
    predecessor, handed = upgrade.inherited()
    peer = None
    if not handed and config.takeover_dir:
        if not os.path.isdir(config.takeover_dir):
            raise StartError(f"--takeover {config.takeover_dir}: no such directory (give "
                             "the --handoff directory of the running master)")
        peer, handed = upgrade.take_over(config.takeover_dir)
    opened = Opened([], config.shared or bool(config.join),  # --join: see join_groups
                    predecessor.workers if predecessor is not None else config.workers,
                    predecessor=predecessor, peer=peer)
    if not handed:
        if not config.bind:
            raise StartError("no address: give --bind or start under socket activation")
        shared = new_listener(config) if opened.shared else None
        opened.slots = [Slot(i, shared or new_listener(config)) for i in range(opened.target)]
        opened.slots[0].listener.check_bind()  # before any handler code runs
        join_groups(config, opened.slots[0].listener)
        return opened
    for h in handed:
        sockets.check_udp(h.sock)
        if config.reader.rcvbuf is not None:
            sockets.set_rcvbuf(h.sock, config.reader.rcvbuf, at_least=True)
    opened.port = handed[0].sock.getsockname()[1]
    if opened.shared or handed[0].slot is None or any(h.external for h in handed):
        if config.steer != "hash":
            raise StartError(f"--steer {config.steer} needs a socket per worker; "
                             "these workers share the one passed")
        opened.shared = True
        first = Listener(handed[0].sock, external=handed[0].external, passed=True)
        if len(handed) > 1:
            log.warning("serving only the first of %d sockets passed", len(handed))
        for extra in handed[1:]:
            extra.sock.close()
        opened.slots = [Slot(i, first) for i in range(opened.target)]
        join_groups(config, first)
        return opened
    for h in handed:
        assert h.slot is not None
        opened.slots.append(Slot(h.slot, Listener(h.sock, passed=True)))
    opened.target = max(opened.target, len(opened.slots))
    used = {s.index for s in opened.slots}
    opened.slots += [Slot(i, new_listener(config)) for i in range(opened.target)
                     if i not in used]
    return opened


def new_listener(config: Config) -> Listener:
    assert config.bind is not None  # sockets we bind come from --bind
    sock, sockaddr = sockets.unbound_socket(config.bind, reuseport=True,
                                            rcvbuf=config.reader.rcvbuf)
    return Listener(sock, sockaddr)


def join_groups(config: Config, listener: Listener) -> None:
    """--join, on the shared socket. Memberships belong to the socket, so
    they pass with it to every worker and to a new master (USR2,
    --takeover), which finds them already joined."""
    if not config.join:
        return
    bound = listener.unbound[0] if listener.unbound is not None else None
    groups = multicast.Memberships(listener.sock, bound_host=bound)
    for m in config.join:
        try:
            joined = groups.join(m.group, interface=m.interface, source=m.source, rejoin=True)
        except (ValueError, OSError) as e:
            raise StartError(f"--join {m}: {describe(e)}") \
                from None
        log.info("joined %s%s", m.describe(), "" if joined else " (the socket had it already)")
    if not config.shared:
        log.info("--join: the workers share one socket, so each multicast datagram is "
                 "handled once (every socket on the port gets its own copy)")
