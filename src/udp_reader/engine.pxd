# Declarations of the C batch engine (csrc/engine.h); the logic that uses
# them lives in the parts of _core (core/*.pyx).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "engine.h" nogil:
    ctypedef struct ur_meta:
        uint64_t timestamp_ns
        uint32_t offset
        uint32_t length
        uint32_t ifindex
        uint16_t segment
        uint16_t family
        uint16_t src_port
        uint8_t ttl
        uint8_t tos
        uint8_t src[16]
        uint8_t dst[16]

    ctypedef struct ur_counters:
        uint64_t received
        uint64_t bytes
        uint64_t too_short
        uint64_t too_long
        uint64_t ctrunc
        uint64_t kernel_drops
        uint64_t batches

    ctypedef struct ur_engine:
        unsigned batch
        unsigned max_records
        int gro
        size_t slot
        uint32_t min_size
        uint32_t max_size
        uint32_t last_ovfl

    int ur_engine_init(ur_engine *e, unsigned batch, uint32_t min_size,
                       uint32_t max_size, int gro)
    void ur_engine_free(ur_engine *e)
    size_t ur_engine_arena_size(const ur_engine *e)
    int ur_engine_recv(ur_engine *e, int fd, unsigned char *arena,
                       ur_meta *meta, ur_counters *c)
    int ur_engine_feed(ur_engine *e, const unsigned char *control,
                       size_t controllen, const unsigned char *name,
                       size_t namelen, uint32_t len, int flags, ur_meta *meta,
                       ur_counters *c)
    int ur_wait(int fd, int wake_fd, int timeout_ms)
    uint64_t ur_engine_drops(const ur_engine *e, const ur_counters *c, uint32_t now)
