/* The batch receive engine: one recvmmsg() call over arrays prepared once,
 * control-message parsing and the length filter.  Plain C, no Python. */
#ifndef UDP_READER_ENGINE_H
#define UDP_READER_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "constants.h"

/* One record per delivered packet, the numpy-visible row of a batch.
 * Addresses are kept in network byte order; an IPv4 packet (also one that
 * reached a dual-stack IPv6 socket) has family AF_INET and uses the first
 * four bytes of src/dst. */
typedef struct ur_meta {
    uint64_t timestamp_ns;  /* kernel receive time (SO_TIMESTAMPNS), else 0 */
    uint32_t offset;        /* payload start in the arena */
    uint32_t length;        /* payload length */
    uint32_t ifindex;       /* interface the packet arrived on */
    uint16_t segment;       /* GRO segment size of a merged receive, else 0 */
    uint16_t family;        /* AF_INET or AF_INET6 */
    uint16_t src_port;      /* host byte order */
    uint8_t ttl;            /* IPv4 TTL or IPv6 hop limit, with ip_fields */
    uint8_t tos;            /* IPv4 TOS or IPv6 traffic class (ECN: low 2 bits) */
    uint8_t src[16];
    uint8_t dst[16];
    uint32_t reserved2;
} ur_meta;

/* Cumulative counters; the caller owns them, the engine only adds. */
typedef struct ur_counters {
    uint64_t received;      /* datagrams taken from the kernel */
    uint64_t bytes;         /* their payload bytes, as sent */
    uint64_t too_short;
    uint64_t too_long;      /* longer than max_size, or cut (MSG_TRUNC) */
    uint64_t ctrunc;        /* control data cut (MSG_CTRUNC) */
    uint64_t kernel_drops;  /* from SO_RXQ_OVFL */
    uint64_t batches;       /* recvmmsg calls that returned data */
} ur_counters;

typedef struct ur_engine {
    unsigned batch;         /* messages per recvmmsg call */
    unsigned max_records;   /* records one receive can yield */
    int gro;                /* split merged (UDP_GRO) receives */
    size_t slot;            /* arena bytes per message */
    uint32_t min_size, max_size;
    uint32_t last_ovfl;     /* highest SO_RXQ_OVFL value seen (wraps) */
    struct mmsghdr *msgs;
    struct iovec *iov;
    struct sockaddr_storage *names;
    unsigned char *control;
} ur_engine;

/* A merged receive: at most UR_GRO_BUFFER bytes, of at most UDP_MAX_SEGMENTS
 * (128 on current kernels) segments. */
#define UR_MAX_SEGMENTS 128

int ur_engine_init(ur_engine *e, unsigned batch, uint32_t min_size,
                   uint32_t max_size, int gro);
void ur_engine_free(ur_engine *e);

/* Arena bytes one receive needs (batch * slot). */
size_t ur_engine_arena_size(const ur_engine *e);

/* One non-blocking recvmmsg into `arena`, writing a record per accepted
 * packet (or GRO segment) into `meta` (room for e->max_records).  Returns the number of
 * records, or -errno (-EAGAIN when the queue is empty).  A call that reads
 * only filtered datagrams returns 0. */
int ur_engine_recv(ur_engine *e, int fd, unsigned char *arena, ur_meta *meta,
                   ur_counters *c);

/* Test entry: the per-datagram work of ur_engine_recv (control messages,
 * source, GRO split, length filter) on arbitrary bytes, as if a receive
 * had returned them, with the payload at arena offset 0. Returns the
 * number of records, or -ENOMEM. */
int ur_engine_feed(ur_engine *e, const unsigned char *control,
                   size_t controllen, const unsigned char *name,
                   size_t namelen, uint32_t len, int flags, ur_meta *meta,
                   ur_counters *c);

/* Family, port (host order) and address of a sockaddr of `namelen` bytes,
 * an IPv4-mapped IPv6 address as plain IPv4 (the first 4 bytes of addr).
 * Returns 0, or -1 for a name too short or of another family (nothing
 * written then). */
int ur_sockaddr_take(const void *name, size_t namelen, uint16_t *family,
                     uint16_t *port, uint8_t addr[16]);

/* Block until `fd` is readable or `wake_fd` is signalled, at most
 * timeout_ms.  Returns 1 when fd is readable, 2 when only its error queue
 * (or a pending error) is, 0 otherwise, or -errno. */
int ur_wait(int fd, int wake_fd, int timeout_ms);

/* The socket's drops since the engine's baseline, exact at the time of the
 * call: what SO_RXQ_OVFL told so far plus what it has not told yet, from
 * `now`, the socket's current drop count (SO_MEMINFO's SK_MEMINFO_DROPS).
 * SO_RXQ_OVFL rides only on the next datagram, so the drops at the end of
 * a burst would otherwise stay unknown until traffic resumes. Safe to call
 * from a thread other than the receiving one. */
uint64_t ur_engine_drops(const ur_engine *e, const ur_counters *c, uint32_t now);

#endif
