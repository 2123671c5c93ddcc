# Part of udp_reader._core (included by _core.pyx): the receive loop of a
# Reader, its engine, slabs and pending packets (declared in
# receive_loop.pxd).

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


class ReceiveError(OSError):
    """The reader itself could not receive: no memory for its buffers
    (errno ENOMEM), or a failing system call. Never the handler's own
    exception, which run() passes on unchanged."""


cdef class _ReceiveLoop:
    """The receiving half of a Reader: one engine receive at a time into a
    free slab, its packets delivered to the handler, the replies they made
    sent after each receive. Reader adds the socket, its set-up and the API
    around it."""

    def __cinit__(self):
        self._fd = -1
        self._wake_fd = -1
        self._deadline = -1.0
        self._limit = UINT64_MAX

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

    cdef _check_open(self):
        if self._fd < 0:
            raise ValueError("the reader is closed")

    # -- receiving -------------------------------------------------------------

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

    def stop(self):
        """Make run() or drain() return promptly; safe from another thread,
        a signal handler or a callback. A stop before run() makes the next
        run return at once (a drain() starts afresh: it is how a reader
        leaves). Packets not yet delivered stay for the next run or drain."""
        cdef uint64_t one = 1
        self._stopping = True
        if self._wake_fd >= 0:
            write(self._wake_fd, &one, sizeof(one))

    # -- the loop --------------------------------------------------------------

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
                self.close()  # Reader's: asked for while the run was under way

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
