# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled bridge between the C engine and Python callbacks.

Memory of one receive (its records and payload arena) lives in a _Slab.
Packets, batches, memoryviews and numpy arrays handed to callbacks keep
their slab alive; after the callbacks return, the reader reuses its slab
only if nothing kept a reference, and otherwise receives into a new one.
So whatever a callback keeps never changes, and nothing is copied unless
the user asks for bytes.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_FillInfo, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_CheckSignals
from cpython.ref cimport Py_REFCNT
from libc.errno cimport EAGAIN, EINTR, EMSGSIZE, ENOMEM
from libc.stdint cimport uint8_t, uint32_t, uint64_t, UINT64_MAX
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

from udp_reader.constants cimport UR_MAX_PAYLOAD4, UR_MAX_PAYLOAD6
from udp_reader.engine cimport *
from udp_reader.replies cimport *

import collections
import logging
import os
import socket
import time

from udp_reader import multicast, sockets
from udp_reader.options import ReaderOptions

cdef extern from "<arpa/inet.h>" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, int size)

cdef extern from "Python.h":
    unsigned long PyThread_get_thread_ident()

cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t count)
    ssize_t write(int fd, const void *buf, size_t count)
    int close(int fd)

# Longest a blocking wait lasts before Python gets to run its signal
# handlers: bounds the delay when a signal lands just before poll().
cdef int WAIT_SLICE_MS = 250
# Receives retried in a row when each returns an ICMP error left pending
# by a datagram we sent.
cdef int ASYNC_ERROR_TRIES = 16
# Idle limits for _loop: wait for traffic forever, or only deliver what
# was already received.
cdef int FOREVER = -1
cdef int PENDING_ONLY = -2

log = logging.getLogger("udp_reader")

# The Reader's defaults are those of ReaderOptions, declared there once.
_DEFAULT = ReaderOptions()

Stats = collections.namedtuple("Stats", [
    "received", "delivered", "too_short", "too_long", "ctrunc",
    "kernel_drops", "batches", "bytes", "sent", "send_errors"])
Stats.__doc__ = """Counters of a Reader since it was opened.

received = delivered + too_short + too_long + packets still pending
(left undelivered by stop() or a callback that raised; the next run
delivers them first).

kernel_drops counts the receive buffers the kernel dropped on a full queue
since the reader took the socket, exact when the stats are read (the
socket's own count, SO_MEMINFO): one per datagram, but with gro=True a
dropped merged receive of up to 64 datagrams of one flow counts once
(measured: 63,488 datagrams lost, 992 counted).

sent counts the datagrams this reader sent (replies, send(), send_many());
send_errors those the kernel refused, plus the errors (ICMP port or host
unreachable, message too big) that came back for datagrams already sent."""


class ReceiveError(OSError):
    """The reader itself could not receive: no memory for its buffers
    (errno ENOMEM), or a failing system call. Never the handler's own
    exception, which run() passes on unchanged."""


cdef str _host(int family, const uint8_t *addr):
    cdef char text[64]
    inet_ntop(family, addr, text, sizeof(text))
    return text.decode("ascii")


SendFailure = collections.namedtuple("SendFailure", ["errno", "datagrams", "mtu"])
SendFailure.__doc__ = """Datagrams to one destination that failed: the errno
of the latest failure, how many failed, and the path MTU the kernel named
with EMSGSIZE (else 0)."""

cdef enum:
    # Destinations send_failures() remembers at most: strangers' (spoofed)
    # sources must not grow memory without bound.
    MAX_FAILURES = 1024
    # Error-queue entries read per call, and calls per read_errors().
    ERRORS_PER_READ = 16
    ERROR_READS = 64
    # linux/errqueue.h: an error our own send raised, not an ICMP message.
    SO_EE_ORIGIN_LOCAL = 1
    # The reply queue of a run: datagrams and arena bytes it holds before
    # it is sent early (one maximal datagram always fits).
    QUEUE_MIN = 64
    QUEUE_MAX = 1024
    QUEUE_ARENA_MIN = 256 << 10


cdef str _family_name(int family):
    return "IPv4" if family == socket.AF_INET else "IPv6"


cdef tuple _numeric(host, str name):
    """(family, packed address) of a numeric IP; an IPv4-mapped IPv6
    address is IPv4."""
    if not isinstance(host, str):
        raise TypeError(f"{name} must be an IP address str, not {type(host).__name__}")
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return socket.AF_INET, socket.inet_pton(socket.AF_INET, text)
    except OSError:
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        raise ValueError(f"{name} {host!r} is not a numeric IP address") from None
    if packed[:12] == b"\0" * 10 + b"\xff\xff":
        return socket.AF_INET, packed[12:]
    return socket.AF_INET6, packed


cdef int _get_payload(object data, Py_buffer *view, str name) except -1:
    try:
        PyObject_GetBuffer(data, view, PyBUF_SIMPLE)
    except TypeError:
        raise TypeError(f"{name} must be bytes-like, not {type(data).__name__}") from None
    return 0


cdef inline void _reply_peer(ur_peer *to, const ur_meta *m) noexcept nogil:
    """Back to the packet's source, from the address and interface it came to."""
    memset(to, 0, sizeof(ur_peer))
    memcpy(to.addr, m.src, 16)
    memcpy(to.local, m.dst, 16)
    to.ifindex = m.ifindex
    to.family = m.family
    to.port = m.src_port
    to.has_local = 1


@cython.final
cdef class _ReplyPath:
    """A reader's reply path: its socket, the reply queue of the run under
    way, counters, and the failures read back from the error queue. Every
    slab points here, so a packet kept after its callback can still answer;
    closing the reader closes this too.

    Replies made in the thread of a run are queued and sent in sendmmsg
    calls after each receive's callbacks (or when the queue fills); from
    anywhere else they are sent at once.
    """
    cdef int fd
    cdef object sock  # held, so a kept packet never sends on a reused descriptor
    cdef int family
    cdef bint v6only
    cdef bint prepared
    cdef bint can_gso
    cdef bint warned_gso
    cdef ur_replies queue
    cdef bint queue_ready
    cdef unsigned capacity
    cdef unsigned long loop_thread
    cdef ur_send_counters c
    cdef dict failures
    cdef dict local_mtus  # host -> path MTU our refused sends were told
    cdef str closed  # why nothing can be sent: a closed reader, or no socket at all

    def __cinit__(self):
        self.fd = -1
        self.failures = {}
        self.local_mtus = {}
        self.closed = "the reader is closed"

    def __dealloc__(self):
        if self.queue_ready:
            ur_replies_free(&self.queue)

    cdef setup(self, sock, unsigned batch):
        self.sock = sock
        self.fd = sock.fileno()
        self.family = sock.family
        self.v6only = (sock.family == socket.AF_INET6 and
                       sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) != 0)
        self.capacity = min(max(2 * batch, <unsigned>QUEUE_MIN), <unsigned>QUEUE_MAX)

    cdef int prepare(self) except -1:
        """Before the first send: errors onto the error queue, GSO probed."""
        cdef int r
        if self.fd < 0:
            raise ValueError(self.closed)
        if self.prepared:
            return 0
        r = ur_enable_recverr(self.fd, self.family)
        if r < 0:
            raise OSError(-r, f"IP_RECVERR: {os.strerror(-r)}")
        self.can_gso = ur_probe_gso(self.fd)
        if not self.can_gso:
            log.warning("the kernel has no GSO (UDP_SEGMENT); sending one datagram per message")
        self.prepared = True
        return 0

    cdef inline bint queueing(self):
        return self.loop_thread != 0 and self.loop_thread == PyThread_get_thread_ident()

    cdef int check_peer(self, const ur_peer *to, Py_ssize_t size, str name) except -1:
        cdef Py_ssize_t limit = UR_MAX_PAYLOAD4 if to.family == socket.AF_INET else UR_MAX_PAYLOAD6
        if self.fd < 0:
            raise ValueError(self.closed)
        if to.family != socket.AF_INET and to.family != socket.AF_INET6:
            raise ValueError("the packet has no source address to answer")
        if size > limit:
            raise ValueError(f"{name} is {size} bytes, more than an "
                             f"{_family_name(to.family)} datagram holds ({limit})")
        return 0

    cdef int reply(self, const ur_peer *to, object data, str name,
                   bint now=False) except -1:
        """Queue one datagram (in the run's thread) or send it now."""
        cdef Py_buffer view
        _get_payload(data, &view, name)
        try:
            self.check_peer(to, view.len, name)
            if not self.prepared:
                self.prepare()
            if self.queueing() and not now:
                self.enqueue(to, <const unsigned char *>view.buf, <uint32_t>view.len)
            else:
                self.send_now(to, <const unsigned char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        return 0

    cdef int enqueue(self, const ur_peer *to, const unsigned char *data,
                     uint32_t length) except -1:
        if not self.queue_ready:
            if ur_replies_init(&self.queue, self.family, self.capacity,
                               max(<size_t>self.capacity * 2048, <size_t>QUEUE_ARENA_MIN),
                               self.can_gso) < 0:
                raise MemoryError()
            self.queue_ready = True
        if not ur_replies_room(&self.queue, length):
            self.flush()
        ur_replies_add(&self.queue, to, data, length)
        return 0

    cdef int flush(self) except -1:
        """Send the queue in sendmmsg calls; note what failed."""
        cdef unsigned failed, count
        if not self.queue_ready or self.queue.count == 0:
            return 0
        if self.fd < 0:
            self.queue.count = 0
            self.queue.used = 0
            return 0
        count = self.queue.count
        with nogil:
            failed = ur_replies_flush(&self.queue, self.fd, &self.c)
        self.settled(&self.queue, count, failed)
        return 0

    cdef settled(self, ur_replies *q, unsigned count, unsigned failed):
        cdef unsigned i
        if failed:
            self.read_errors()  # path MTUs for EMSGSIZE
            for i in range(count):
                if q.status[i]:
                    self.note(q.peers[i].family, q.peers[i].addr, q.peers[i].port,
                              q.status[i], 0)
        if q.gso_refused and self.can_gso:
            self.can_gso = False
            if self.queue_ready:
                self.queue.gso = 0
            if not self.warned_gso:
                self.warned_gso = True
                log.warning("the kernel refused GSO (UDP_SEGMENT) on this socket; "
                            "sending one datagram per message from now on")

    cdef int send_now(self, const ur_peer *to, const unsigned char *data,
                      size_t length) except -1:
        cdef int r
        with nogil:
            r = ur_send_one(self.fd, self.family, to, data, length)
        if r == 0:
            self.c.sent += 1
            return 0
        self.c.errors += 1
        if r == -EMSGSIZE:
            self.read_errors()  # the kernel's own note names the path MTU
        self.note(to.family, to.addr, to.port, -r, 0)
        host = _host(to.family, to.addr)
        where = sockets.format_address(host, to.port)
        if r == -EMSGSIZE:
            raise OSError(EMSGSIZE, f"data: {length} bytes exceed the path MTU to {where} "
                                    f"({self.failures.get((host, to.port), (0, 0, '?'))[2]} "
                                    f"bytes), and the socket sets don't-fragment")
        raise OSError(-r, f"send to {where}: {os.strerror(-r)}")

    cdef int send_echo(self, const ur_meta *meta, const unsigned char *arena,
                       Py_ssize_t n) except -1:
        """Every packet of meta[:n] back to its source: no Python object
        per packet. Received payloads fit a datagram of their family."""
        cdef Py_ssize_t i
        cdef size_t total = 0
        cdef ur_peer to
        cdef ur_replies temp
        cdef unsigned failed
        for i in range(n):
            _reply_peer(&to, &meta[i])
            self.check_peer(&to, meta[i].length, "replies")
            total += meta[i].length
        if not self.prepared:
            self.prepare()
        if self.queueing():
            for i in range(n):
                _reply_peer(&to, &meta[i])
                self.enqueue(&to, arena + meta[i].offset, meta[i].length)
            return 0
        if ur_replies_init(&temp, self.family, max(n, 1), max(total, 1), self.can_gso) < 0:
            raise MemoryError()
        try:
            for i in range(n):
                _reply_peer(&to, &meta[i])
                ur_replies_add(&temp, &to, arena + meta[i].offset, meta[i].length)
            with nogil:
                failed = ur_replies_flush(&temp, self.fd, &self.c)
            self.settled(&temp, <unsigned>n, failed)
        finally:
            ur_replies_free(&temp)
        return 0

    cdef int send_all(self, ur_peer *peers, list payloads, str name) except -1:
        """payloads[i] (None: nothing) to peers[i], in sendmmsg calls. Every
        payload is checked before any is sent."""
        cdef Py_ssize_t i, n = len(payloads)
        cdef size_t total = 0
        cdef Py_buffer view
        cdef ur_replies temp
        cdef unsigned failed
        for i in range(n):
            data = payloads[i]
            if data is None:
                continue
            _get_payload(data, &view, f"{name}[{i}]")
            PyBuffer_Release(&view)
            self.check_peer(&peers[i], view.len, f"{name}[{i}]")
            total += view.len
        if not self.prepared:
            self.prepare()
        if self.queueing():
            for i in range(n):
                if payloads[i] is not None:
                    _get_payload(payloads[i], &view, name)
                    try:
                        self.enqueue(&peers[i], <const unsigned char *>view.buf,
                                     <uint32_t>view.len)
                    finally:
                        PyBuffer_Release(&view)
            return 0
        if ur_replies_init(&temp, self.family, max(n, 1), max(total, 1), self.can_gso) < 0:
            raise MemoryError()
        try:
            for i in range(n):
                if payloads[i] is not None:
                    _get_payload(payloads[i], &view, name)
                    ur_replies_add(&temp, &peers[i], view.buf, <uint32_t>view.len)
                    PyBuffer_Release(&view)
            n = temp.count
            with nogil:
                failed = ur_replies_flush(&temp, self.fd, &self.c)
            self.settled(&temp, <unsigned>n, failed)
        finally:
            ur_replies_free(&temp)
        return 0

    cdef int peer_for(self, ur_peer *to, address, source, ifindex) except -1:
        """A destination from the API's address, source and ifindex."""
        host, port = sockets.parse_address(address)
        if not host or port == 0:
            raise ValueError(f"address must give a host and a port, not {address!r}")
        family, packed = _numeric(host, "address")
        if self.family == socket.AF_INET and family == socket.AF_INET6:
            raise ValueError(f"address {host!r} is IPv6, but the reader's socket is IPv4")
        if self.v6only and family == socket.AF_INET:
            raise ValueError(f"address {host!r} is IPv4, but the reader's socket "
                             f"takes IPv6 only")
        memset(to, 0, sizeof(ur_peer))
        to.family = family
        to.port = port
        memcpy(to.addr, <const char *>packed, len(packed))
        if source is not None:
            local_family, local = _numeric(source, "source")
            if local_family != family:
                raise ValueError(f"source {source!r} is {_family_name(local_family)}, "
                                 f"but address {host!r} is {_family_name(family)}")
            memcpy(to.local, <const char *>local, len(local))
            to.has_local = 1
        if ifindex is not None:
            if not isinstance(ifindex, int) or isinstance(ifindex, bool):
                raise TypeError(f"ifindex must be an int, not {ifindex!r}")
            if not 0 <= ifindex <= 0xffffffff:
                raise ValueError(f"ifindex must be within 0..4294967295, not {ifindex}")
            to.ifindex = ifindex
        return 0

    cdef int read_errors(self) except -1:
        """Count what the error queue holds (ICMP errors for datagrams sent)."""
        cdef ur_send_error errors[ERRORS_PER_READ]
        cdef int n, i, reads
        for reads in range(ERROR_READS):
            if self.fd < 0:
                return 0
            n = ur_read_errors(self.fd, errors, ERRORS_PER_READ)
            if n <= 0:
                return 0
            for i in range(n):
                if errors[i].origin == SO_EE_ORIGIN_LOCAL:
                    # Our own send was refused and counted then; this names
                    # the path MTU (of a destination without its port).
                    if errors[i].err == EMSGSIZE and len(self.local_mtus) < MAX_FAILURES:
                        self.local_mtus[_host(errors[i].family, errors[i].addr)] = errors[i].info
                    continue
                self.c.errors += 1
                self.note(errors[i].family, errors[i].addr, errors[i].port, errors[i].err,
                          errors[i].info if errors[i].err == EMSGSIZE else 0)
            if n < ERRORS_PER_READ:
                return 0
        return 0

    cdef note(self, int family, const uint8_t *addr, uint16_t port, int err, uint32_t mtu):
        if family != socket.AF_INET and family != socket.AF_INET6:
            return
        host = _host(family, addr)
        if err == EMSGSIZE and not mtu:
            mtu = self.local_mtus.pop(host, 0)
        key = (host, port)
        old = self.failures.get(key)
        if old is None:
            if len(self.failures) < MAX_FAILURES:
                self.failures[key] = SendFailure(err, 1, mtu)
        else:
            self.failures[key] = SendFailure(err, old.datagrams + 1, mtu or old.mtu)

    cdef dict take_failures(self):
        self.read_errors()
        failures, self.failures = self.failures, {}
        return failures


@cython.final
cdef class _Slab:
    """Records then payload arena of one receive, in one allocation, exported
    read-only through the buffer protocol for numpy."""
    cdef unsigned char *mem
    cdef Py_ssize_t size
    cdef ur_meta *meta
    cdef unsigned char *arena
    cdef Py_ssize_t meta_bytes
    cdef _ReplyPath replies  # where its packets' replies go
    cdef bint ip_fields  # its records hold TTL and TOS

    def __cinit__(self, Py_ssize_t records, Py_ssize_t arena_bytes):
        self.meta_bytes = records * sizeof(ur_meta)
        self.size = self.meta_bytes + max(arena_bytes, 1)
        self.mem = <unsigned char *>malloc(self.size)
        if self.mem == NULL:
            raise MemoryError()
        self.meta = <ur_meta *>self.mem
        self.arena = self.mem + self.meta_bytes

    def __dealloc__(self):
        free(self.mem)

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, self.mem, self.size, 1, flags)


@cython.final
@cython.freelist(512)
cdef class Packet:
    """One received datagram: payload, source, destination and interface.

    The payload is read without a copy through the buffer protocol
    (memoryview(packet), numpy.frombuffer(packet)); `.data` copies it into
    bytes. Addresses are built only when asked for.
    """
    cdef _Slab _slab
    cdef ur_meta *_m

    def __init__(self):
        raise TypeError("packets come from a Reader")

    @property
    def data(self):
        """The payload as bytes, exactly its length."""
        return PyBytes_FromStringAndSize(
            <char *>self._slab.arena + self._m.offset, self._m.length)

    def __bytes__(self):
        return self.data

    def __len__(self):
        return self._m.length

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, self._slab.arena + self._m.offset,
                          self._m.length, 1, flags)

    def reply(self, data):
        """Send `data` (bytes-like) back to the packet's source, from the
        address and interface the packet arrived on, through the reader's
        socket. In a callback of the reader's run the reply is queued and
        goes out with the others of its receive in sendmmsg calls; anywhere
        else (a kept packet, another thread) it is sent at once, and a send
        error raises OSError."""
        cdef ur_peer to
        _reply_peer(&to, self._m)
        self._slab.replies.reply(&to, data, "data")

    @property
    def src(self):
        """The sender as (host, port)."""
        return (_host(self._m.family, self._m.src), self._m.src_port)

    @property
    def dst(self):
        """The local address the datagram was sent to."""
        return _host(self._m.family, self._m.dst)

    @property
    def ifindex(self):
        """Index of the interface the datagram arrived on."""
        return self._m.ifindex

    @property
    def segment(self):
        """The GRO segment size when the packet arrived merged with others of
        its flow (Reader(gro=True)), else 0."""
        return self._m.segment

    @property
    def timestamp_ns(self):
        """Kernel receive time in nanoseconds since the epoch, or 0."""
        return self._m.timestamp_ns

    @property
    def timestamp(self):
        """Kernel receive time in seconds since the epoch, or None unless the
        reader was made with timestamps=True."""
        return self._m.timestamp_ns / 1e9 if self._m.timestamp_ns else None

    @property
    def family(self):
        """socket.AF_INET or socket.AF_INET6 (IPv4 on a dual-stack socket is AF_INET)."""
        return socket.AddressFamily(self._m.family)

    @property
    def ttl(self):
        """The IPv4 TTL or IPv6 hop limit the datagram arrived with, or None
        unless the reader was made with ip_fields=True."""
        return self._m.ttl if self._slab.ip_fields else None

    @property
    def tos(self):
        """The IPv4 TOS byte or IPv6 traffic class (DSCP << 2 | ECN), or None
        unless the reader was made with ip_fields=True."""
        return self._m.tos if self._slab.ip_fields else None

    @property
    def ecn(self):
        """The ECN codepoint, the low two bits of tos (0 not ECN-capable,
        1 ECT(1), 2 ECT(0), 3 CE), or None unless ip_fields=True."""
        return self._m.tos & 3 if self._slab.ip_fields else None

    def __repr__(self):
        host, port = self.src
        return (f"<Packet {sockets.format_address(host, port)} -> {self.dst} "
                f"if={self._m.ifindex} len={self._m.length}>")


cdef inline Packet _packet(_Slab slab, Py_ssize_t index):
    cdef Packet p = Packet.__new__(Packet)
    p._slab = slab
    p._m = &slab.meta[index]
    return p


_meta_dtype = None


def _dtype():
    """numpy dtype of one engine record, laid out from the C struct itself."""
    global _meta_dtype
    if _meta_dtype is None:
        import numpy
        _meta_dtype = numpy.dtype(_meta_layout())
    return _meta_dtype


cdef dict _meta_layout():
    cdef ur_meta m
    cdef char *base = <char *>&m
    fields = [
        ("timestamp_ns", "<u8", <char *>&m.timestamp_ns - base),
        ("offset", "<u4", <char *>&m.offset - base),
        ("length", "<u4", <char *>&m.length - base),
        ("ifindex", "<u4", <char *>&m.ifindex - base),
        ("segment", "<u2", <char *>&m.segment - base),
        ("family", "<u2", <char *>&m.family - base),
        ("src_port", "<u2", <char *>&m.src_port - base),
        ("ttl", "u1", <char *>&m.ttl - base),
        ("tos", "u1", <char *>&m.tos - base),
        ("src_addr", ("u1", 16), <char *>&m.src - base),
        ("dst_addr", ("u1", 16), <char *>&m.dst - base),
    ]
    return {"names": [f[0] for f in fields], "formats": [f[1] for f in fields],
            "offsets": [f[2] for f in fields], "itemsize": sizeof(ur_meta)}


@cython.final
cdef class Batch:
    """The packets of one receive.

    Index or iterate for Packets; or work on whole columns with numpy:
    `records` (one structured row per packet), `lengths`, `offsets`,
    `ifindex`, `src_port`, `src_addr`, `dst_addr`, `ttl` and `tos` (with
    ip_fields), `payload` (the arena the offsets point into) and
    `payloads(width)`. The arrays are read-only views; nothing is copied.
    """
    cdef _Slab _slab
    cdef Py_ssize_t _start
    cdef Py_ssize_t _count

    def __init__(self):
        raise TypeError("batches come from a Reader")

    def __len__(self):
        return self._count

    def __getitem__(self, Py_ssize_t index):
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("packet index out of range")
        return _packet(self._slab, self._start + index)

    def __iter__(self):
        cdef Py_ssize_t i
        for i in range(self._start, self._start + self._count):
            yield _packet(self._slab, i)

    def reply(self, replies):
        """Answer the batch's packets: replies[i] (bytes-like, or None for
        no answer) goes to packet i's source from the address and interface
        it came to, in sendmmsg calls, runs of equal-sized replies to one
        peer merged with GSO. `batch.reply(batch)` echoes every packet.
        Every entry is checked before any is sent."""
        cdef Py_ssize_t i
        cdef ur_peer *peers
        if replies is self:  # an echo, straight from the receive arena
            self._slab.replies.send_echo(&self._slab.meta[self._start], self._slab.arena,
                                        self._count)
            return
        payloads = replies if type(replies) is list else list(replies)
        if len(payloads) != self._count:
            raise ValueError(f"replies must have one entry per packet ({self._count}), "
                             f"not {len(payloads)}")
        peers = <ur_peer *>malloc(max(self._count, 1) * sizeof(ur_peer))
        if peers == NULL:
            raise MemoryError()
        try:
            for i in range(self._count):
                _reply_peer(&peers[i], &self._slab.meta[self._start + i])
            self._slab.replies.send_all(peers, payloads, "replies")
        finally:
            free(peers)

    @property
    def records(self):
        """All records as a numpy structured array (one row per packet)."""
        import numpy
        return numpy.frombuffer(self._slab, dtype=_dtype(), count=self._count,
                                offset=self._start * sizeof(ur_meta))

    @property
    def lengths(self):
        return self.records["length"]

    @property
    def offsets(self):
        """Where each payload starts in `payload`."""
        return self.records["offset"]

    @property
    def ifindex(self):
        return self.records["ifindex"]

    @property
    def src_port(self):
        return self.records["src_port"]

    @property
    def ttl(self):
        """TTLs (IPv4) and hop limits (IPv6) as uint8, or None unless the
        reader was made with ip_fields=True."""
        return self.records["ttl"] if self._slab.ip_fields else None

    @property
    def tos(self):
        """TOS bytes (IPv4) and traffic classes (IPv6) as uint8, ECN in the
        low two bits, or None unless the reader was made with ip_fields=True."""
        return self.records["tos"] if self._slab.ip_fields else None

    @property
    def src_addr(self):
        """Sender addresses as (n, 16) uint8 rows; IPv4 in the first 4 bytes."""
        return self.records["src_addr"]

    @property
    def dst_addr(self):
        """Destination addresses as (n, 16) uint8 rows; IPv4 in the first 4 bytes."""
        return self.records["dst_addr"]

    @property
    def payload(self):
        """The receive arena as uint8; packet i is payload[offsets[i]:offsets[i]+lengths[i]]."""
        import numpy
        return numpy.frombuffer(self._slab, dtype=numpy.uint8,
                                offset=self._slab.meta_bytes)

    def payloads(self, Py_ssize_t width):
        """The first `width` bytes of every packet as an (n, width) uint8 array.

        A view without a copy when the payloads are evenly spaced in the
        arena (no packet filtered out of the batch, or the segments of one
        merged receive); a compact copy otherwise. Raises ValueError if a
        packet is shorter than `width`.
        """
        import numpy
        from numpy.lib.stride_tricks import as_strided
        if width < 0:
            raise ValueError("width must be >= 0")
        lengths, offsets, arena = self.lengths, self.offsets, self.payload
        if self._count == 0:
            return numpy.empty((0, width), dtype=numpy.uint8)
        if lengths.min() < width:
            raise ValueError(f"a packet is shorter than width={width}")
        steps = numpy.diff(offsets.astype(numpy.int64))
        if self._count == 1 or (steps[0] > 0 and (steps == steps[0]).all()):
            step = int(steps[0]) if self._count > 1 else width
            return as_strided(arena[offsets[0]:], shape=(self._count, width),
                              strides=(step, 1), writeable=False)
        return arena[offsets[:, None] + numpy.arange(width)]

    def __repr__(self):
        return f"<Batch of {self._count} packets>"



def _batch_of(records, frames):
    """A Batch of packets that another source than a Reader's socket took
    (the packet watcher): `records` laid out as Batch.records, one per
    packet, whose offsets and lengths point into `frames`. The payloads are
    copied into the batch's own arena, so both may be reused at once. Its
    packets have TTL and TOS, and cannot answer: no socket received them."""
    cdef Py_buffer rec, src
    cdef Py_ssize_t i, n
    cdef size_t total = 0, at = 0
    cdef const ur_meta *given
    cdef _Slab slab
    cdef _ReplyPath none
    cdef Batch batch
    PyObject_GetBuffer(records, &rec, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(frames, &src, PyBUF_SIMPLE)
        try:
            if rec.len % sizeof(ur_meta):
                raise ValueError(f"records must be whole records of {sizeof(ur_meta)} bytes")
            n = rec.len // sizeof(ur_meta)
            given = <const ur_meta *>rec.buf
            for i in range(n):
                if <size_t>given[i].offset + given[i].length > <size_t>src.len:
                    raise ValueError(f"record {i} points past the end of frames")
                total += given[i].length
            slab = _Slab(n, total)
            memcpy(slab.meta, given, n * sizeof(ur_meta))
            for i in range(n):
                memcpy(slab.arena + at, <const unsigned char *>src.buf + given[i].offset,
                       given[i].length)
                slab.meta[i].offset = <uint32_t>at
                at += given[i].length
        finally:
            PyBuffer_Release(&src)
    finally:
        PyBuffer_Release(&rec)
    none = _ReplyPath()
    none.closed = "a watched packet cannot answer: no socket of ours received it"
    slab.replies = none
    slab.ip_fields = True
    batch = Batch.__new__(Batch)
    batch._slab = slab
    batch._start = 0
    batch._count = n
    return batch


cdef class Reader:
    """Receive UDP datagrams in batches from a socket bound to `address`.

    Address forms: "host:port", ":port" (every address, dual-stack),
    "[v6]:port", a port number, or ("host", port); port 0 picks a free port
    (see `address`). Datagrams shorter than `min_size` or longer than
    `max_size` are counted and dropped in compiled code. The options are
    checked by udp_reader.options.ReaderOptions.

    `rcvbuf` sets the receive buffer of a socket opened here; a socket handed
    in (`fileno`, from_socket()) is only ever raised to it, never shrunk.
    rcvbuf=None leaves the buffer as it is.

    `ip_fields` reads every packet's TTL and TOS (packet.ttl, .tos, .ecn).
    `join` lists multicast groups to join, as join() takes them or in the
    notation [SOURCE>]GROUP[@INTERFACE] (see udp_reader.multicast).
    """
    cdef ur_engine _engine
    cdef ur_counters _c
    cdef uint64_t _delivered
    cdef object _sock
    cdef int _fd
    cdef int _wake_fd
    cdef bint _engine_ready
    cdef bint _running
    cdef bint _stopping
    cdef bint _close_after_run
    cdef _Slab _slab
    cdef Py_ssize_t _pending_next
    cdef Py_ssize_t _pending_end
    cdef object _handler
    cdef bint _handler_takes_batches
    cdef object _shed_peer
    cdef double _deadline
    cdef _ReplyPath _replies
    cdef bint _ip_fields
    cdef uint64_t _limit  # run(count=): deliver up to this total, then return
    cdef uint64_t _drops_told  # kernel_drops as last reported: it never goes back
    cdef object _groups  # multicast.Memberships, from the first join

    def __cinit__(self):
        self._fd = -1
        self._wake_fd = -1
        self._deadline = -1.0
        self._limit = UINT64_MAX

    def __init__(self, address=None, *, min_size=_DEFAULT.min_size,
                 max_size=_DEFAULT.max_size, batch_size=_DEFAULT.batch_size,
                 bint reuseport=True, rcvbuf=_DEFAULT.rcvbuf, timestamps=_DEFAULT.timestamps,
                 gro=_DEFAULT.gro, ip_fields=_DEFAULT.ip_fields, join=(), fileno=None):
        options = ReaderOptions(min_size=min_size, max_size=max_size, batch_size=batch_size,
                                rcvbuf=rcvbuf, gro=gro, timestamps=timestamps,
                                ip_fields=ip_fields)
        if isinstance(join, (str, multicast.Membership)):
            raise TypeError(f"join must be a list of memberships, not {join!r}")
        memberships = []
        for i, entry in enumerate(join or ()):
            try:
                memberships.append(multicast.parse(entry))
            except (TypeError, ValueError) as e:
                raise type(e)(f"join[{i}]: {e}") from None
        if (address is None) == (fileno is None):
            raise TypeError("give exactly one of address or fileno")
        if fileno is not None:
            sock = socket.socket(fileno=fileno)
            try:
                sockets.check_udp(sock)
                sockets.enable_metadata(sock)
                if options.rcvbuf is not None:
                    # A socket handed in may be larger on purpose (ReceiveBuffer=).
                    sockets.set_rcvbuf(sock, options.rcvbuf, at_least=True)
            except BaseException:
                sock.detach()  # a refused descriptor stays the caller's
                raise
        else:
            sock = sockets.open_socket(address, reuseport=reuseport, rcvbuf=options.rcvbuf)
        try:
            if options.timestamps:
                sockets.enable_timestamps(sock)
            if options.ip_fields:
                sockets.enable_ip_fields(sock)
            self._ip_fields = options.ip_fields
            gro = options.gro and sockets.enable_gro(sock)
            if ur_engine_init(&self._engine, options.batch_size, options.min_size,
                              options.max_size, gro) < 0:
                raise MemoryError()
            self._engine_ready = True
            # Drops counted before we took the socket are not ours.
            self._engine.last_ovfl = sockets.kernel_drops(sock)
            self._replies = _ReplyPath()
            self._replies.setup(sock, options.batch_size)
            self._slab = self._new_slab()
            self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            if memberships:
                self._groups = multicast.Memberships(sock)
                for i, m in enumerate(memberships):
                    try:
                        self._groups.join(m.group, interface=m.interface, source=m.source)
                    except (TypeError, ValueError) as e:
                        raise type(e)(f"join[{i}] {str(m)!r}: {e}") from None
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._fd = sock.fileno()

    @classmethod
    def from_socket(cls, sock, **options):
        """A Reader on a duplicate of an existing bound UDP socket (inherited,
        passed over a Unix socket, or from systemd); `sock` stays yours."""
        sockets.check_udp(sock)
        fd = os.dup(sock.fileno())
        try:
            return cls(fileno=fd, **options)
        except BaseException:
            os.close(fd)
            raise

    def __dealloc__(self):
        if self._engine_ready:
            ur_engine_free(&self._engine)
        if self._wake_fd >= 0:
            close(self._wake_fd)

    cdef _Slab _new_slab(self):
        cdef _Slab slab = _Slab(self._engine.max_records, ur_engine_arena_size(&self._engine))
        slab.replies = self._replies
        slab.ip_fields = self._ip_fields
        return slab

    # -- properties ---------------------------------------------------------

    @property
    def address(self):
        """The bound (host, port)."""
        self._check_open()
        return self._sock.getsockname()[:2]

    @property
    def socket(self):
        """The underlying socket.socket (owned by the reader)."""
        return self._sock

    def fileno(self):
        self._check_open()
        return self._fd

    @property
    def rcvbuf(self):
        """The receive buffer size the kernel reports (twice the size set)."""
        self._check_open()
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    @property
    def min_size(self):
        return self._engine.min_size

    @property
    def max_size(self):
        return self._engine.max_size

    @property
    def batch_size(self):
        return self._engine.batch

    @property
    def gro(self):
        """True when merged (UDP_GRO) receives are on and split here."""
        return bool(self._engine.gro)

    @property
    def ip_fields(self):
        """True when every packet's TTL and TOS are read (ip_fields=True)."""
        return bool(self._ip_fields)

    @property
    def closed(self):
        return self._fd < 0

    # -- multicast --------------------------------------------------------------

    def join(self, group, *, interface=None, source=None):
        """Join a multicast group: from any source, or only from `source`
        (source-specific); on `interface` (a name, an index, an IPv4 address,
        or "*" for every interface that is up and multicast-capable), else
        where the kernel routes the group. The socket gets only the groups it
        joined (IP_MULTICAST_ALL is off). Joining twice, a source-specific
        join of a group joined for any source (the kernel would narrow it
        silently) and an unknown interface raise ValueError."""
        self._check_open()
        if self._groups is None:
            self._groups = multicast.Memberships(self._sock)
        self._groups.join(group, interface=interface, source=source)

    def leave(self, group, *, interface=None, source=None):
        """Leave a group joined with join(): from `source` only, when given;
        else every source. interface="*" leaves it wherever it was joined.
        A group not joined raises ValueError."""
        self._check_open()
        if self._groups is None:
            self._groups = multicast.Memberships(self._sock)
        self._groups.leave(group, interface=interface, source=source)

    @property
    def memberships(self):
        """The groups joined through this reader, as multicast.Membership
        tuples: one per interface (an index, an IPv4 address, or None for the
        kernel's choice) and source."""
        return [] if self._groups is None else list(self._groups)

    @property
    def stats(self):
        """A Stats snapshot of the counters."""
        cdef uint64_t drops = self._c.kernel_drops
        if self._sock is not None:
            drops = ur_engine_drops(&self._engine, &self._c,
                                    <uint32_t>sockets.kernel_drops(self._sock))
        self._drops_told = max(self._drops_told, drops)
        return Stats(self._c.received, self._delivered, self._c.too_short,
                     self._c.too_long, self._c.ctrunc, self._drops_told,
                     self._c.batches, self._c.bytes, self._replies.c.sent,
                     self._replies.c.errors)

    @property
    def gso(self):
        """True while replies to one peer of equal size may be merged into
        one message with UDP_SEGMENT; False once the kernel refused it."""
        self._check_open()
        if not self._replies.prepared:
            return bool(ur_probe_gso(self._fd))
        return self._replies.can_gso

    # -- control ------------------------------------------------------------

    def stop(self):
        """Make run() or drain() return promptly; safe from another thread,
        a signal handler or a callback. A stop before run() makes the next
        run return at once (a drain() starts afresh: it is how a reader
        leaves). Packets not yet delivered stay for the next run or drain."""
        cdef uint64_t one = 1
        self._stopping = True
        if self._wake_fd >= 0:
            write(self._wake_fd, &one, sizeof(one))

    def close(self):
        """Close the socket; idempotent. Called while run() is active, it
        stops the run and closes when the run returns."""
        if self._running:
            self._close_after_run = True
            self.stop()
            return
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._shed_peer is not None:
            self._shed_peer.close()
            self._shed_peer = None
        self._fd = -1
        if self._replies is not None:
            self._replies.fd = -1  # kept packets can no longer answer
            self._replies.sock = None
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            self._wake_fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        if self._fd < 0:
            return "<Reader closed>"
        host, port = self.address
        return f"<Reader {sockets.format_address(host, port)}>"

    cdef _check_open(self):
        if self._fd < 0:
            raise ValueError("the reader is closed")

    # -- sending --------------------------------------------------------------

    def send(self, data, address, *, source=None, ifindex=None):
        """Send one datagram now through the reader's socket to `address`
        ("host:port", "[v6]:port" or (host, port), numeric), from the local
        address `source` and interface `ifindex` when given (else the
        kernel's choice). A send error raises OSError."""
        cdef ur_peer to
        self._check_open()
        self._replies.peer_for(&to, address, source, ifindex)
        self._replies.prepare()
        self._replies.reply(&to, data, "data", True)

    def send_many(self, messages, *, source=None, ifindex=None):
        """Send (data, address) pairs in sendmmsg calls, from `source` and
        `ifindex` when given; runs of equal-sized datagrams to one address
        are merged with GSO. In a callback of this reader's run they join
        that receive's replies; else they go at once. Every pair is checked
        before any is sent; failures are counted (stats.send_errors) and
        kept per destination (send_failures())."""
        cdef Py_ssize_t i, n
        cdef ur_peer *peers
        self._check_open()
        pairs = messages if type(messages) is list else list(messages)
        n = len(pairs)
        payloads = [None] * n
        peers = <ur_peer *>malloc(max(n, 1) * sizeof(ur_peer))
        if peers == NULL:
            raise MemoryError()
        try:
            parsed = {}
            for i in range(n):
                try:
                    data, address = pairs[i]
                except (TypeError, ValueError):
                    raise TypeError(f"messages[{i}] must be a (data, address) pair, "
                                    f"not {pairs[i]!r}") from None
                if data is None:
                    raise TypeError(f"messages[{i}]: data must be bytes-like, not None")
                key = address if isinstance(address, (str, tuple)) else repr(address)
                if key not in parsed:
                    self._replies.peer_for(&peers[i], address, source, ifindex)
                    parsed[key] = i
                else:
                    peers[i] = peers[<Py_ssize_t>parsed[key]]
                payloads[i] = data
            self._replies.send_all(peers, payloads, "messages")
        finally:
            free(peers)

    def send_failures(self):
        """Destinations whose datagrams failed since the last call, as
        {(host, port): SendFailure(errno, datagrams, mtu)}: refused sends and
        the ICMP errors read back from the socket's error queue."""
        self._check_open()
        return self._replies.take_failures()

    # -- receiving ------------------------------------------------------------

    def run(self, on_packet, *, count=None):
        """Call on_packet(packet) for every packet until stop() is called,
        or until `count` packets were delivered by this call.

        An exception from on_packet propagates out of run(); the packets of
        its batch that were not yet delivered are delivered first by the
        next run. A failure of the reader itself raises ReceiveError.
        """
        self._handler, self._handler_takes_batches = on_packet, False
        self._loop(FOREVER, self._count_limit(count))

    def run_batches(self, on_batch, *, count=None):
        """Call on_batch(batch) once per receive until stop() is called, or
        until `count` packets were delivered by this call (the last batch is
        cut to fit; the rest of its receive stays for the next call)."""
        self._handler, self._handler_takes_batches = on_batch, True
        self._loop(FOREVER, self._count_limit(count))

    cdef uint64_t _count_limit(self, count) except? 0:
        if count is None:
            return UINT64_MAX
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"count must be an int or None, not {count!r}")
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        return self._delivered + <uint64_t>count

    def receive_batch(self):
        """One receive without waiting: a Batch, or None when nothing is
        queued. For event loops that wait for readability themselves."""
        cdef Batch batch
        self._check_open()
        if self._running:
            raise RuntimeError("the reader is already running")
        while self._pending_next >= self._pending_end:
            if not self._receive():
                if self._replies.prepared:
                    # An event loop wakes us for the error queue too.
                    self._replies.read_errors()
                return None
        batch = self._take_batch()
        self._delivered += batch._count
        return batch

    def shed(self):
        """Stop the kernel from steering new datagrams to this socket; those
        already queued stay readable. Other sockets on the port (SO_REUSEPORT)
        take the new ones; with none left, the kernel refuses them."""
        self._check_open()
        # Another holder of a shared socket may have shed it already.
        if self._shed_peer is None and not sockets.is_shed(self._sock):
            self._shed_peer = sockets.shed(self._sock)

    def drain(self, on_packet=None, *, on_batch=None, bint shed=True,
              double grace=0.05, timeout=None):
        """Hand over the port without losing a datagram, then close.

        With shed=True, shed() the socket, deliver everything queued until
        none has arrived for `grace` seconds (a datagram already steered can
        still land just after the shed), and close. With shed=False, for a
        socket that others keep reading (a shared or handed-off socket),
        deliver only what this reader already took from the kernel, and
        close. The handler defaults to the last run's. `timeout` bounds the
        whole drain. Returns the number of packets delivered.
        """
        if on_packet is not None and on_batch is not None:
            raise TypeError("give on_packet or on_batch, not both")
        if on_packet is not None:
            self._handler, self._handler_takes_batches = on_packet, False
        elif on_batch is not None:
            self._handler, self._handler_takes_batches = on_batch, True
        elif self._handler is None:
            raise TypeError("drain() needs a handler: on_packet, on_batch or a previous run's")
        if grace < 0:
            raise ValueError(f"grace must be >= 0, not {grace}")
        self._check_open()
        before = self._delivered
        self._stopping = False  # a stop() between runs must not skip what is held
        if shed:
            self.shed()
        self._deadline = -1.0 if timeout is None else time.monotonic() + timeout
        try:
            self._loop(<int>(grace * 1000) if shed else PENDING_ONLY)
            if self._deadline >= 0 and time.monotonic() >= self._deadline:
                log.warning("drain timed out after %.1f s; datagrams still queued are lost",
                            timeout)
        finally:
            self._deadline = -1.0
            self.close()
        return self._delivered - before

    cdef _loop(self, int idle_ms, uint64_t limit=UINT64_MAX):
        cdef Batch batch
        self._check_open()
        if self._running:
            raise RuntimeError("the reader is already running")
        self._running = True
        self._limit = limit
        self._replies.loop_thread = PyThread_get_thread_ident()
        try:
            while self._next_batch(idle_ms):
                if self._handler_takes_batches:
                    batch = self._take_batch()
                    self._delivered += batch._count
                    self._handler(batch)
                    batch = None
                else:
                    self._deliver_packets(self._handler)
                if self._replies.queue.count:
                    self._replies.flush()  # this receive's replies
        finally:
            self._end()

    cdef Batch _take_batch(self):
        """All pending packets as one Batch."""
        cdef Batch batch = Batch.__new__(Batch)
        batch._slab = self._slab
        batch._start = self._pending_next
        batch._count = self._pending_end - self._pending_next
        if <uint64_t>batch._count > self._limit - self._delivered:
            batch._count = <Py_ssize_t>(self._limit - self._delivered)
        self._pending_next += batch._count
        return batch

    cdef _deliver_packets(self, on_packet):
        cdef _Slab slab = self._slab
        cdef Packet packet = None
        cdef Py_ssize_t i
        while (self._pending_next < self._pending_end and not self._stopping
               and self._delivered < self._limit):
            i = self._pending_next
            self._pending_next = i + 1
            self._delivered += 1
            # A Packet the callback did not keep is ours alone: reuse it.
            if packet is None or Py_REFCNT(packet) > 1:
                packet = _packet(slab, i)
            else:
                packet._m = &slab.meta[i]
            on_packet(packet)

    cdef _end(self):
        cdef uint64_t value
        try:
            # Replies made before a stop or an exception; still running, so
            # a close() from another thread waits for them.
            self._replies.flush()
        finally:
            self._replies.loop_thread = 0
            self._running = False
            self._stopping = False
            self._limit = UINT64_MAX
            if self._wake_fd >= 0:
                read(self._wake_fd, &value, sizeof(value))
            if self._close_after_run:
                self.close()

    cdef bint _receive(self) except -1:
        """One non-blocking recvmmsg into a free slab; False if the queue was
        empty. The new records become the pending packets."""
        cdef int n, tries
        if Py_REFCNT(self._slab) > 1:
            try:
                self._slab = self._new_slab()  # a callback kept something
            except MemoryError:
                raise ReceiveError(ENOMEM, "no memory for a new receive buffer "
                                           f"({ur_engine_arena_size(&self._engine)} bytes)") from None
        for tries in range(ASYNC_ERROR_TRIES):
            with nogil:
                n = ur_engine_recv(&self._engine, self._fd, self._slab.arena,
                                   self._slab.meta, &self._c)
            if n >= 0 or not ur_async_error(-n):
                break
            # An ICMP error for a datagram we sent, not a failed receive.
            self._replies.read_errors()
        if n == -EAGAIN or (n < 0 and ur_async_error(-n)):
            return False
        if n < 0:
            raise ReceiveError(-n, f"recvmmsg: {os.strerror(-n)}")
        self._pending_next = 0
        self._pending_end = n
        return True

    cdef bint _next_batch(self, int idle_ms) except -1:
        """Make pending packets available: what an earlier run left, or a new
        receive. Returns False once stop() is asked, and in a drain once the
        queue has been idle for idle_ms (PENDING_ONLY: never receives)."""
        cdef int r, wait_ms
        cdef int fd = self._fd, wake_fd = self._wake_fd
        while not self._stopping and self._delivered < self._limit:
            PyErr_CheckSignals()
            if self._pending_next < self._pending_end:
                return True
            if idle_ms == PENDING_ONLY:
                return False
            if self._deadline >= 0 and time.monotonic() >= self._deadline:
                return False
            if self._receive():
                continue
            wait_ms = WAIT_SLICE_MS if idle_ms == FOREVER else idle_ms
            with nogil:
                r = ur_wait(fd, wake_fd, wait_ms)
            if r == 2:
                self._replies.read_errors()  # only the error queue was ready
                continue
            if r == 0 and idle_ms != FOREVER and not self._stopping:
                return False  # idle: the drain is complete
            if r < 0 and r != -EINTR:
                raise ReceiveError(-r, f"poll: {os.strerror(-r)}")
        return False


def _engine_feed(bytes control, bytes name, uint32_t length, int flags, *,
                 min_size=_DEFAULT.min_size, max_size=_DEFAULT.max_size, gro=_DEFAULT.gro,
                 uint32_t last_ovfl=0):
    """Test-only: the engine's per-datagram parsing on arbitrary bytes, with
    `last_ovfl` the drop count the engine saw last.

    Returns (records, counters): records as dicts of offset, length, segment,
    family, src_port, ifindex, ttl, tos; counters as a dict, with the engine's
    last_ovfl after the datagram."""
    cdef ur_engine engine
    cdef ur_counters c
    cdef ur_meta *meta
    cdef int n, i
    options = ReaderOptions(min_size=min_size, max_size=max_size, gro=gro)
    memset(&c, 0, sizeof(c))
    if ur_engine_init(&engine, 1, options.min_size, options.max_size, options.gro) < 0:
        raise MemoryError()
    engine.last_ovfl = last_ovfl
    meta = <ur_meta *>malloc(engine.max_records * sizeof(ur_meta))
    try:
        if meta == NULL:
            raise MemoryError()
        n = ur_engine_feed(&engine, control, len(control), name, len(name), length,
                           flags, meta, &c)
        if n < 0:
            raise MemoryError()
        records = [{"offset": meta[i].offset, "length": meta[i].length,
                    "segment": meta[i].segment, "family": meta[i].family,
                    "src_port": meta[i].src_port, "ifindex": meta[i].ifindex,
                    "ttl": meta[i].ttl, "tos": meta[i].tos}
                   for i in range(n)]
        return records, {"received": c.received, "too_short": c.too_short,
                         "too_long": c.too_long, "ctrunc": c.ctrunc,
                         "kernel_drops": c.kernel_drops, "last_ovfl": engine.last_ovfl,
                         "bytes": c.bytes,
                         "buffer": engine.slot if gro else options.max_size}
    finally:
        free(meta)
        ur_engine_free(&engine)
