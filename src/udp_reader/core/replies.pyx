# Part of udp_reader._core (included by _core.pyx): the reply path, how a
# Reader, its packets and its batches send (declared in replies.pxd).

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



cdef class _ReplyPath:
    """A reader's reply path: its socket, the reply queue of the run under
    way, counters, and the failures read back from the error queue. Every
    slab points here, so a packet kept after its callback can still answer;
    closing the reader closes this too.

    Replies made in the thread of a run are queued and sent in sendmmsg
    calls after each receive's callbacks (or when the queue fills); from
    anywhere else they are sent at once.
    """

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
