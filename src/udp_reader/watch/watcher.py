"""Watch a UDP port the way tcpdump does: a packet socket sees a copy of
every datagram to the port, and the sockets that serve it still get each
one. Nothing joins the port's SO_REUSEPORT group.

The kernel runs the port's filter (watch/filter.py) on every packet and
queues only the matches; they are read 64 at a time with recvmmsg and
turned into the records a Reader makes (watch/frames.py), so a Batch of
them goes to the same formats, --write and --top as `listen` uses.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import socket
import struct
import threading
from typing import Any, Callable, Optional

import numpy as np

from udp_reader import Stats, sockets
from udp_reader._core import _batch_of
from udp_reader.options import DEFAULT_BATCH, DEFAULT_RCVBUF, MAX_BATCH
from udp_reader.watch import filter as bpf
from udp_reader.watch.frames import RECORD_FIELDS, parse, record_struct

SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23
SO_ATTACH_FILTER = 26
ETH_P_ALL = 0x0003
SLOT = 65536 + 64      # frame bytes per message: the largest IP packet
CONTROL = 64           # control bytes per message: one SCM_TIMESTAMPNS
NAME = 20              # sizeof(struct sockaddr_ll)
MAX_BATCHES = 16       # receives per wakeup before looking at stop()
_TIMESTAMP = struct.Struct("=QiiQQ")  # cmsghdr (len, level, type), then a timespec


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


class _SockaddrLL(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("protocol", ctypes.c_ushort),
                ("ifindex", ctypes.c_int), ("hatype", ctypes.c_ushort),
                ("pkttype", ctypes.c_ubyte), ("halen", ctypes.c_ubyte),
                ("addr", ctypes.c_ubyte * 8)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                           ctypes.c_void_p]
_libc.bind.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]


class Watcher:
    """Sees every UDP datagram to `address` ("host:port", ":port", "[v6]:port")
    arriving on `interface` (None: every interface) without taking any.

    Needs CAP_NET_RAW (PermissionError otherwise). Like a Reader: run_batches(),
    stop(), close(), stats and address; its packets carry TTL and TOS and
    cannot answer. stats.kernel_drops counts what the kernel could not queue
    for the watcher (PACKET_STATISTICS), not drops of the port's sockets;
    stats.too_long counts datagrams seen only in part (a first fragment).
    """

    def __init__(self, address: sockets.Address, *, interface: Optional[str] = None,
                 batch_size: int = DEFAULT_BATCH, rcvbuf: Optional[int] = DEFAULT_RCVBUF) -> None:
        host, port = sockets.parse_address(address)
        if port == 0:
            raise ValueError("address: a watcher needs the port to watch, not 0")
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be within 1..{MAX_BATCH}, not {batch_size}")
        try:
            code, _ = bpf.for_address(host, port)
        except ValueError:
            raise ValueError(f"address {host!r}: a watcher needs a numeric IP address") from None
        try:
            ifindex = socket.if_nametoindex(interface) if interface else 0
        except OSError:
            raise ValueError(f"interface {interface!r} does not exist here") from None
        self.address = (host, port)
        self.interface = interface
        self._batch = batch_size
        # Protocol 0 queues nothing until bind(): the filter is in place first.
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        except PermissionError:
            raise PermissionError(errno.EPERM, "watching needs root or CAP_NET_RAW") from None
        try:
            self._setup(code, ifindex, rcvbuf)
        except BaseException:
            self._sock.close()
            raise
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._lock = threading.Lock()
        self._counts = {"received": 0, "cut": 0, "batches": 0, "bytes": 0, "drops": 0}
        self._buffers()

    def _setup(self, code: bytes, ifindex: int, rcvbuf: Optional[int]) -> None:
        program = ctypes.create_string_buffer(code, len(code))
        fprog = struct.pack("HL", bpf.length(code), ctypes.addressof(program))
        self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        try:  # the filter drops outgoing copies anyway; this spares the clone
            self._sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            pass
        self._sock.setsockopt(socket.SOL_SOCKET, sockets.SO_TIMESTAMPNS, 1)
        if rcvbuf:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, sockets.SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        where = _SockaddrLL(family=socket.AF_PACKET, protocol=socket.htons(ETH_P_ALL),
                            ifindex=ifindex)
        if _libc.bind(self._sock.fileno(), ctypes.byref(where), ctypes.sizeof(where)) < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"cannot watch: {os.strerror(e)}")

    def _buffers(self) -> None:
        """Every message's frame, name and control space, made once."""
        n = self._batch
        self._frames = ctypes.create_string_buffer(n * SLOT)
        self._names = ctypes.create_string_buffer(n * NAME)
        self._control = ctypes.create_string_buffer(n * CONTROL)
        self._iov = (_IOVec * n)()
        self._msgs = (_MMsgHdr * n)()
        for i in range(n):
            self._iov[i].base = ctypes.addressof(self._frames) + i * SLOT
            self._iov[i].len = SLOT
            hdr = self._msgs[i].hdr
            hdr.name = ctypes.addressof(self._names) + i * NAME
            hdr.iov = ctypes.addressof(self._iov[i])
            hdr.iovlen = 1
            hdr.control = ctypes.addressof(self._control) + i * CONTROL
        # The fields each receive resets or reads, as numpy columns.
        view = np.dtype({"names": ["namelen", "controllen", "len"],
                         "formats": ["<u4", "<u8", "<u4"],
                         "offsets": [_MsgHdr.namelen.offset, _MsgHdr.controllen.offset,
                                     _MMsgHdr.len.offset],
                         "itemsize": ctypes.sizeof(_MMsgHdr)})
        self._columns = np.frombuffer(self._msgs, dtype=view)
        self._used = n  # messages the last receive filled: the ones to reset
        self._record = record_struct()
        self._records = bytearray(n * self._record.size)
        self._view = memoryview(self._frames).cast("B")
        self._name_view = memoryview(self._names).cast("B")
        self._control_view = memoryview(self._control).cast("B")
        self._ifindex = struct.Struct("=4xi")

    # -- the Reader-like surface ---------------------------------------------

    @property
    def stats(self) -> Stats:
        self._read_drops()
        c = self._counts
        return Stats(received=c["received"], delivered=c["received"], too_short=0,
                     too_long=c["cut"], ctrunc=0, kernel_drops=c["drops"],
                     batches=c["batches"], bytes=c["bytes"], sent=0, send_errors=0)

    def _read_drops(self) -> None:
        """PACKET_STATISTICS counts since its last read: add them up."""
        if self._sock.fileno() < 0:
            return
        with self._lock:
            _, drops = struct.unpack("II", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            self._counts["drops"] += drops

    def stop(self) -> None:
        """End run_batches() after the receive under way; any thread or a
        signal handler."""
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # closed, or already woken
            pass

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._read_drops()
            self._sock.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def __enter__(self) -> "Watcher":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run_batches(self, on_batch: Callable[[Any], Any]) -> None:
        """Call on_batch(batch) for every receive until stop()."""
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        self._stopping = False
        while not self._stopping:
            poller.poll()
            for _ in range(MAX_BATCHES):
                batch = self.receive_batch()
                if batch is None:
                    break
                on_batch(batch)
                if self._stopping:
                    break

    def receive_batch(self):
        """The datagrams queued now, at most batch_size, as a Batch; None if
        none is."""
        n, used = self._batch, self._used
        self._columns["namelen"][:used] = NAME  # the kernel wrote them: reset
        self._columns["controllen"][:used] = CONTROL
        self._used = 0
        got = _libc.recvmmsg(self._sock.fileno(), ctypes.addressof(self._msgs), n,
                             socket.MSG_DONTWAIT, None)
        if got < 0:
            e = ctypes.get_errno()
            if e in (errno.EAGAIN, errno.EINTR):
                return None
            raise OSError(e, f"receive: {os.strerror(e)}")
        self._used = got
        return self._batch_from(got)

    def _batch_from(self, got: int):
        frames, names, control = self._view, self._name_view, self._control_view
        sizes = self._columns["len"][:got].tolist()
        controls = self._columns["controllen"][:got].tolist()
        pack, record_size, records = self._record.pack_into, self._record.size, self._records
        cut = nbytes = 0
        for i in range(got):
            start, length, partial, fields = parse(frames, i * SLOT, sizes[i])
            stamp = 0
            if controls[i] >= _TIMESTAMP.size:
                _, level, kind, seconds, nanoseconds = _TIMESTAMP.unpack_from(control, i * CONTROL)
                if level == socket.SOL_SOCKET and kind == sockets.SO_TIMESTAMPNS:
                    stamp = seconds * 1_000_000_000 + nanoseconds
            ifindex = self._ifindex.unpack_from(names, i * NAME)[0]
            pack(records, i * record_size, stamp, start, length, ifindex, 0, *fields)
            cut += partial
            nbytes += length
        c = self._counts
        c["received"] += got
        c["cut"] += cut
        c["bytes"] += nbytes
        c["batches"] += 1
        return _batch_of(memoryview(records)[:got * record_size], frames)


assert RECORD_FIELDS[3:5] == ("ifindex", "segment")  # what _batch_from packs there
