# Declarations of the load generator's C send path (csrc/loadgen.h); the logic
# that uses them lives in _loadgen.pyx.
from libc.stdint cimport uint32_t, uint64_t

cdef extern from "<sys/socket.h>" nogil:
    struct sockaddr:
        pass

cdef extern from "loadgen.h" nogil:
    ctypedef struct ur_loadgen:
        unsigned batch
        size_t slot
        unsigned char *payloads

    int ur_loadgen_init(ur_loadgen *s, unsigned batch, size_t slot)
    void ur_loadgen_free(ur_loadgen *s)
    int ur_loadgen_send(ur_loadgen *s, int fd, const sockaddr *dst,
                       unsigned dstlen, const uint32_t *lengths,
                       unsigned count, int stamp_seq, uint64_t seq,
                       uint32_t segment)
