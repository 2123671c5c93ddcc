# Declarations of the C send path (csrc/sender.h); the logic that uses them
# lives in _sender.pyx.
from libc.stdint cimport uint32_t, uint64_t

cdef extern from "<sys/socket.h>" nogil:
    struct sockaddr:
        pass

cdef extern from "sender.h" nogil:
    ctypedef struct ur_sender:
        unsigned batch
        size_t slot
        unsigned char *payloads

    int ur_sender_init(ur_sender *s, unsigned batch, size_t slot)
    void ur_sender_free(ur_sender *s)
    int ur_sender_send(ur_sender *s, int fd, const sockaddr *dst,
                       unsigned dstlen, const uint32_t *lengths,
                       unsigned count, int stamp_seq, uint64_t seq,
                       uint32_t segment)
