"""The load generator behind `udp-reader send`: sendmmsg batches from one or
more source ports, paced to a rate, with payloads a receiver can check."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import socket
import time
from typing import List, Optional, Tuple

from udp_reader._constants import GSO_SEGMENTS, MAX_PAYLOAD, MAX_PAYLOAD_V6
from udp_reader._loadgen import BatchSender
from udp_reader.sockets import UDP_SEGMENT, Address, parse_address

log = logging.getLogger("udp_reader")

BATCH = 64
SEQ_BYTES = 8
PAYLOAD_KINDS = ("seq", "random")
RANDOM_POOL = 4 << 20  # random bytes that random payloads are cut from


@dataclasses.dataclass
class SendReport:
    sent: int
    bytes: int
    seconds: float
    refused: int  # sends the kernel refused (ICMP port unreachable)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        refused = f", {self.refused} refused" if self.refused else ""
        return (f"sent {self.sent} datagrams ({self.bytes} bytes) in {self.seconds:.2f} s: "
                f"{self.rate:,.0f} datagrams/s, {self.bytes / max(self.seconds, 1e-9) / 1e6:.1f} "
                f"MB/s{refused}")


def parse_sizes(text: str) -> Tuple[int, int]:
    """'N' or 'MIN-MAX' payload bytes."""
    low, sep, high = text.partition("-")
    try:
        sizes = (int(low), int(high) if sep else int(low))
    except ValueError:
        raise ValueError(f"size {text!r} must be N or MIN-MAX") from None
    if not 0 <= sizes[0] <= sizes[1] <= MAX_PAYLOAD_V6:
        raise ValueError(f"size {text!r} must be within 0..{MAX_PAYLOAD_V6}, smallest first")
    return sizes


def payload_limit(family: int, sockaddr: tuple) -> int:
    """The largest payload one datagram carries to `sockaddr`: an IPv4
    header counts against it, an IPv6 one does not (a mapped IPv4
    destination travels as IPv4)."""
    if family == socket.AF_INET6 and not sockaddr[0].lower().startswith("::ffff:"):
        return MAX_PAYLOAD_V6
    return MAX_PAYLOAD


def destination(address: Address) -> Tuple[int, tuple]:
    host, port = parse_address(address)
    if not host or port == 0:
        raise ValueError(f"send needs a host and a port, not {address!r}")
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    except socket.gaierror as e:
        raise socket.gaierror(e.errno, f"cannot resolve {host!r}: {e.strerror}") from None
    return family, sockaddr


class LoadGenerator:
    """`flows` connected sockets (one source port each), each with a
    BatchSender whose payload slots are filled once."""

    def __init__(self, address: Address, *, sizes: Tuple[int, int] = (64, 64),
                 payload: str = "seq", flows: int = 1, gso: bool = False) -> None:
        if flows < 1:
            raise ValueError(f"flows must be at least 1, not {flows}")
        self.stopping = False
        family, sockaddr = destination(address)
        limit = payload_limit(family, sockaddr)
        self.seq = payload == "seq"
        contents: Optional[bytes] = None
        if payload.startswith("@"):
            try:
                with open(payload[1:], "rb") as f:
                    contents = f.read()
            except OSError as e:
                raise OSError(e.errno, f"cannot read payload file {payload[1:]}: {e.strerror}") from None
            if len(contents) > limit:
                raise ValueError(f"payload file {payload[1:]} is over {limit} bytes, "
                                 f"the limit to {sockaddr[0]}")
            sizes = (len(contents), len(contents))
        elif payload not in PAYLOAD_KINDS:
            raise ValueError(f"payload must be seq, random or @FILE, not {payload!r}")
        elif sizes[1] > limit:
            raise ValueError(f"size {sizes[1]} is over {limit} bytes, the limit to {sockaddr[0]}")
        if self.seq and sizes[0] < SEQ_BYTES:
            raise ValueError(f"seq payloads need at least {SEQ_BYTES} bytes")
        # With GSO one message carries `per_message` datagrams of one size,
        # which the kernel cuts apart (UDP_SEGMENT).
        self.segment = 0
        self.per_message = 1
        if gso:
            if sizes[0] != sizes[1] or sizes[0] == 0:
                raise ValueError("GSO sends datagrams of one size: give --size N")
            self.segment = sizes[0]
            self.per_message = min(GSO_SEGMENTS, MAX_PAYLOAD // self.segment)
        rng = random.Random(0)
        self.lengths = [rng.randint(*sizes) for _ in range(BATCH * 16)]
        slot = sizes[1] * self.per_message
        self.flows: List[Tuple[socket.socket, BatchSender]] = []
        try:
            for _ in range(flows):
                sock = socket.socket(family, socket.SOCK_DGRAM)
                self.flows.append((sock, BatchSender(sock, BATCH, slot)))
                if gso:
                    try:
                        sock.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, self.segment)
                    except OSError as e:
                        raise OSError(e.errno, f"GSO (UDP_SEGMENT) refused: {e.strerror}") from None
                sock.connect(sockaddr)
        except BaseException:
            self.close()
            raise
        for _, sender in self.flows:
            view = memoryview(sender)
            if contents is not None:
                for i in range(BATCH):
                    view[i * sender.slot:(i + 1) * sender.slot] = contents
        # Random payloads are cut afresh for every send from a pool, at an
        # offset that moves on: a paced send of one or two datagrams would
        # otherwise repeat the first slots' bytes.
        self.pool: Optional[memoryview] = None
        self._pool_at = 0
        if payload == "random":
            self.pool = memoryview(os.urandom(max(RANDOM_POOL, 2 * BATCH * slot)))

    def _refill(self, sender: BatchSender, datagrams: int) -> None:
        """Fresh random bytes in the slots the next send uses."""
        assert self.pool is not None
        size = datagrams * sender.slot
        if self._pool_at + size > len(self.pool):
            self._pool_at = (self._pool_at + 1) % sender.slot  # a new phase, not a replay
        memoryview(sender)[:size] = self.pool[self._pool_at:self._pool_at + size]
        self._pool_at += size + 1

    def _lengths(self, datagrams: int, cursor: int) -> List[int]:
        """Message lengths that carry `datagrams` datagrams."""
        if not self.segment:
            return self.lengths[cursor:cursor + datagrams]  # run() keeps it in range
        full, rest = divmod(datagrams, self.per_message)
        return [self.per_message * self.segment] * full + ([rest * self.segment] if rest else [])

    def close(self) -> None:
        for sock, _ in self.flows:
            sock.close()

    def stop(self) -> None:
        """End run() after the send under way (from a signal handler: a
        datagram the kernel took is never left out of the report)."""
        self.stopping = True

    def run(self, *, rate: float = 0, count: Optional[int] = None,
            duration: Optional[float] = None) -> SendReport:
        """Send until `count` datagrams or `duration` seconds (or stop());
        rate 0 is as fast as the kernel takes them. With a rate, a duration
        is a count: ceil(rate x duration) datagrams, one every 1/rate s, all
        of them even where the pacing's sleeps end past the duration (and
        later where the host cannot reach the rate)."""
        sent = nbytes = refused = 0
        flow = cursor = 0
        flows, most = self.flows, BATCH * self.per_message
        if rate and duration is not None:
            planned = math.ceil(rate * duration - 1e-9)  # 2000 x 3 is 6000, not 6001
            count = planned if count is None else min(count, planned)
            duration = None
        self.stopping = False
        start = time.monotonic()
        try:
            while (count is None or sent < count) and not self.stopping:
                now = time.monotonic()
                if duration is not None and now - start >= duration:
                    break
                n = most if count is None else min(most, count - sent)
                if rate:
                    due = int((now - start) * rate) + 1 - sent
                    if due <= 0:
                        time.sleep(min(0.001, -due / rate + 1 / rate))
                        continue
                    n = min(n, due)
                if cursor + n > len(self.lengths):
                    cursor = 0
                lengths = self._lengths(n, cursor)
                if self.pool is not None:
                    self._refill(flows[flow][1], len(lengths))
                try:
                    done = flows[flow][1].send(lengths, self.seq, sent, self.segment)
                except ConnectionRefusedError:
                    refused += 1  # an ICMP error from an earlier send; go on
                    continue
                sent_bytes = sum(lengths[:done])
                sent += sent_bytes // self.segment if self.segment else done
                nbytes += sent_bytes
                cursor += n
                flow = (flow + 1) % len(flows)
        except KeyboardInterrupt:
            pass
        return SendReport(sent, nbytes, time.monotonic() - start, refused)


