# Declarations of the reply path (replies.pyx), included by _core.pxd.

@cython.final
cdef class _ReplyPath:
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

    cdef setup(self, sock, unsigned batch)
    cdef int prepare(self) except -1
    cdef inline bint queueing(self)
    cdef int check_peer(self, const ur_peer *to, Py_ssize_t size, str name) except -1
    cdef int reply(self, const ur_peer *to, object data, str name, bint now=*) except -1
    cdef int enqueue(self, const ur_peer *to, const unsigned char *data,
                     uint32_t length) except -1
    cdef int flush(self) except -1
    cdef settled(self, ur_replies *q, unsigned count, unsigned failed)
    cdef int send_now(self, const ur_peer *to, const unsigned char *data,
                      size_t length) except -1
    cdef int send_echo(self, const ur_meta *meta, const unsigned char *arena,
                       Py_ssize_t n) except -1
    cdef int send_all(self, ur_peer *peers, list payloads, str name) except -1
    cdef int peer_for(self, ur_peer *to, address, source, ifindex) except -1
    cdef int read_errors(self) except -1
    cdef note(self, int family, const uint8_t *addr, uint16_t port, int err, uint32_t mtu)
    cdef dict take_failures(self)
