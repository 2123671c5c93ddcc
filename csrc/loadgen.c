#define _GNU_SOURCE
#include "loadgen.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int ur_loadgen_init(ur_loadgen *s, unsigned batch, size_t slot)
{
    memset(s, 0, sizeof *s);
    s->batch = batch;
    s->slot = slot;
    s->msgs = calloc(batch, sizeof *s->msgs);
    s->iov = calloc(batch, sizeof *s->iov);
    s->payloads = calloc(batch, slot ? slot : 1);
    if (!s->msgs || !s->iov || !s->payloads) {
        ur_loadgen_free(s);
        return -ENOMEM;
    }
    return 0;
}

void ur_loadgen_free(ur_loadgen *s)
{
    free(s->msgs);
    free(s->iov);
    free(s->payloads);
    s->msgs = NULL;
    s->iov = NULL;
    s->payloads = NULL;
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

int ur_loadgen_send(ur_loadgen *s, int fd, const struct sockaddr *dst,
                   unsigned dstlen, const uint32_t *lengths, unsigned count,
                   int stamp_seq, uint64_t seq, uint32_t segment)
{
    unsigned i, done = 0;

    if (count > s->batch)
        count = s->batch;
    for (i = 0; i < count; i++) {
        unsigned char *p = s->payloads + i * s->slot;
        struct msghdr *h = &s->msgs[i].msg_hdr;
        if (stamp_seq && segment) {
            /* GSO: the kernel cuts the message every `segment` bytes. */
            for (uint32_t off = 0; off + 8 <= lengths[i]; off += segment)
                put_le64(p + off, seq++);
        } else if (stamp_seq && lengths[i] >= 8) {
            put_le64(p, seq++);
        }
        s->iov[i].iov_base = p;
        s->iov[i].iov_len = lengths[i];
        memset(h, 0, sizeof *h);
        h->msg_name = (void *)dst;
        h->msg_namelen = dstlen;
        h->msg_iov = &s->iov[i];
        h->msg_iovlen = 1;
    }
    /* sendmmsg may stop early (a full socket buffer): go on from there. */
    while (done < count) {
        int n = sendmmsg(fd, s->msgs + done, count - done, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return done ? (int)done : -errno;
        }
        done += (unsigned)n;
    }
    return (int)done;
}
