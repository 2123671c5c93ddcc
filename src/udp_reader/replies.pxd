# Declarations of the C reply path (csrc/replies.h); the logic that uses
# them lives in the parts of _core (core/*.pyx).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "replies.h" nogil:
    ctypedef struct ur_peer:
        uint8_t addr[16]
        uint8_t local[16]
        uint32_t ifindex
        uint16_t family
        uint16_t port
        uint8_t has_local

    ctypedef struct ur_send_counters:
        uint64_t sent
        uint64_t errors

    ctypedef struct ur_replies:
        int family
        int gso
        int gso_refused
        unsigned capacity
        unsigned count
        size_t arena_size
        size_t used
        ur_peer *peers
        uint32_t *lengths
        int *status

    ctypedef struct ur_send_error:
        int err
        uint32_t info
        uint8_t origin
        uint8_t type
        uint8_t code
        uint16_t family
        uint16_t port
        uint8_t addr[16]

    int ur_replies_init(ur_replies *r, int family, unsigned capacity,
                        size_t arena_size, int gso)
    void ur_replies_free(ur_replies *r)
    int ur_replies_room(const ur_replies *r, uint32_t len)
    int ur_replies_add(ur_replies *r, const ur_peer *to, const void *data,
                       uint32_t len)
    unsigned ur_replies_flush(ur_replies *r, int fd, ur_send_counters *c)
    int ur_send_one(int fd, int family, const ur_peer *to, const void *data,
                    size_t len)
    int ur_enable_recverr(int fd, int family)
    int ur_read_errors(int fd, ur_send_error *out, unsigned max)
    int ur_async_error(int err)
    int ur_probe_gso(int fd)
