# Declarations of the receive loop (receive_loop.pyx), included by _core.pxd.

cdef class _ReceiveLoop:
    cdef ur_engine _engine
    cdef ur_counters _c
    cdef uint64_t _delivered
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
    cdef double _deadline
    cdef _ReplyPath _replies
    cdef bint _ip_fields
    cdef uint64_t _limit  # run(count=): deliver up to this total, then return

    cdef _Slab _new_slab(self)
    cdef _check_open(self)
    cdef uint64_t _count_limit(self, count) except? 0
    cdef _loop(self, int idle_ms, uint64_t limit=*)
    cdef Batch _take_batch(self)
    cdef _deliver_packets(self, on_packet)
    cdef _end(self)
    cdef bint _receive(self) except -1
    cdef bint _next_batch(self, int idle_ms) except -1
