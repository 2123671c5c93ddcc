/* The load generator's send path: sendmmsg() over messages prepared once.
 * Plain C, no Python. */
#ifndef UDP_READER_LOADGEN_H
#define UDP_READER_LOADGEN_H

#include <stddef.h>
#include <stdint.h>

struct mmsghdr;
struct iovec;
struct sockaddr;

typedef struct ur_loadgen {
    unsigned batch;         /* datagrams per sendmmsg call */
    size_t slot;            /* payload bytes reserved per datagram */
    struct mmsghdr *msgs;
    struct iovec *iov;
    unsigned char *payloads; /* batch * slot bytes, filled by the caller */
} ur_loadgen;

int ur_loadgen_init(ur_loadgen *s, unsigned batch, size_t slot);
void ur_loadgen_free(ur_loadgen *s);

/* Send message i (i < count <= batch) of lengths[i] bytes from payload
 * slot i to `dst` (NULL for a connected socket). With stamp_seq, the first
 * 8 bytes of each datagram carry consecutive numbers from `seq`
 * (little-endian); with `segment` (UDP_SEGMENT set on the socket) a message
 * is a run of datagrams of that size, each stamped. Returns how many
 * messages were sent, or -errno. */
int ur_loadgen_send(ur_loadgen *s, int fd, const struct sockaddr *dst,
                   unsigned dstlen, const uint32_t *lengths, unsigned count,
                   int stamp_seq, uint64_t seq, uint32_t segment);

#endif
