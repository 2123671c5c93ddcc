#define _GNU_SOURCE
#include "engine.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

int ur_engine_init(ur_engine *e, unsigned batch, uint32_t min_size,
                   uint32_t max_size, int gro)
{
    memset(e, 0, sizeof *e);
    e->batch = batch;
    e->min_size = min_size;
    e->max_size = max_size;
    e->gro = gro;
    /* A datagram longer than the slot is cut and flagged MSG_TRUNC, so a
     * slot of max_size is enough to tell every too-long datagram apart.  A
     * merged (GRO) receive needs room for all its segments: 64 KiB.  Round
     * up to a cache line so payloads start aligned. */
    e->slot = gro ? UR_GRO_BUFFER : ((size_t)max_size + 63) & ~(size_t)63;
    e->max_records = gro ? batch * UR_MAX_SEGMENTS : batch;
    e->msgs = calloc(batch, sizeof *e->msgs);
    e->iov = calloc(batch, sizeof *e->iov);
    e->names = calloc(batch, sizeof *e->names);
    e->control = calloc(batch, UR_CONTROL_SIZE);
    if (!e->msgs || !e->iov || !e->names || !e->control) {
        ur_engine_free(e);
        return -ENOMEM;
    }
    return 0;
}

void ur_engine_free(ur_engine *e)
{
    free(e->msgs);
    free(e->iov);
    free(e->names);
    free(e->control);
    e->msgs = NULL;
    e->iov = NULL;
    e->names = NULL;
    e->control = NULL;
}

size_t ur_engine_arena_size(const ur_engine *e)
{
    return e->batch * e->slot;
}

int ur_sockaddr_take(const void *name, size_t namelen, uint16_t *family,
                     uint16_t *port, uint8_t addr[16])
{
    sa_family_t af;

    if (namelen < sizeof af)
        return -1;
    memcpy(&af, name, sizeof af);
    if (af == AF_INET && namelen >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in sin;
        memcpy(&sin, name, sizeof sin);
        *family = AF_INET;
        *port = ntohs(sin.sin_port);
        memcpy(addr, &sin.sin_addr, 4);
    } else if (af == AF_INET6 && namelen >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 sin6;
        memcpy(&sin6, name, sizeof sin6);
        *port = ntohs(sin6.sin6_port);
        if (IN6_IS_ADDR_V4MAPPED(&sin6.sin6_addr)) {
            *family = AF_INET;
            memcpy(addr, &sin6.sin6_addr.s6_addr[12], 4);
        } else {
            *family = AF_INET6;
            memcpy(addr, &sin6.sin6_addr, 16);
        }
    } else {
        return -1;
    }
    return 0;
}

/* True when `size` bytes of data of `cm` lie inside the control buffer:
 * the kernel never says otherwise, but nothing here trusts a length. */
static int cmsg_holds(const struct msghdr *h, const struct cmsghdr *cm,
                      size_t size)
{
    const unsigned char *end = (const unsigned char *)h->msg_control +
                               h->msg_controllen;
    return cm->cmsg_len >= CMSG_LEN(size) && CMSG_DATA(cm) + size <= end;
}

/* TTL/hop limit and TOS/traffic class (IP_RECVTTL, IP_RECVTOS,
 * IPV6_RECVHOPLIMIT, IPV6_RECVTCLASS).  IP_TOS carries one byte; the
 * others an int. */
static void take_ip_field(ur_meta *m, const struct msghdr *h,
                          const struct cmsghdr *cm)
{
    int value;

    if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_TOS) {
        if (cmsg_holds(h, cm, 1))
            m->tos = *CMSG_DATA(cm);
        return;
    }
    if (!cmsg_holds(h, cm, sizeof value))
        return;
    memcpy(&value, CMSG_DATA(cm), sizeof value);
    if ((cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_TTL) ||
        (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_HOPLIMIT))
        m->ttl = (uint8_t)value;
    else if (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_TCLASS)
        m->tos = (uint8_t)value;
}

/* Read the control messages of one datagram into its record; returns the
 * GRO segment size, 0 when the datagram is not merged. */
static uint32_t take_control(ur_engine *e, ur_meta *m, struct msghdr *h,
                             ur_counters *c)
{
    struct cmsghdr *cm;
    uint32_t segment = 0;
    for (cm = CMSG_FIRSTHDR(h); cm; cm = CMSG_NXTHDR(h, cm)) {
        if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_PKTINFO &&
            cmsg_holds(h, cm, sizeof(struct in_pktinfo))) {
            struct in_pktinfo pi;
            memcpy(&pi, CMSG_DATA(cm), sizeof pi);
            memcpy(m->dst, &pi.ipi_addr, 4);
            m->ifindex = (uint32_t)pi.ipi_ifindex;
        } else if (cm->cmsg_level == IPPROTO_IPV6 &&
                   cm->cmsg_type == IPV6_PKTINFO &&
                   cmsg_holds(h, cm, sizeof(struct in6_pktinfo))) {
            struct in6_pktinfo pi;
            memcpy(&pi, CMSG_DATA(cm), sizeof pi);
            if (IN6_IS_ADDR_V4MAPPED(&pi.ipi6_addr))
                memcpy(m->dst, &pi.ipi6_addr.s6_addr[12], 4);
            else
                memcpy(m->dst, &pi.ipi6_addr, 16);
            m->ifindex = pi.ipi6_ifindex;
        } else if (cm->cmsg_level == SOL_SOCKET &&
                   cm->cmsg_type == SCM_TIMESTAMPNS &&
                   cmsg_holds(h, cm, sizeof(struct timespec))) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(cm), sizeof ts);
            m->timestamp_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        } else if (cm->cmsg_level == SOL_SOCKET &&
                   cm->cmsg_type == SO_RXQ_OVFL &&
                   cmsg_holds(h, cm, sizeof(uint32_t))) {
            uint32_t drops;
            int32_t ahead;
            memcpy(&drops, CMSG_DATA(cm), sizeof drops);
            /* Cumulative and wrapping. A datagram carries the count of when
             * it was queued, which can be older than the last one seen (or
             * than the baseline taken at start): count forward moves only. */
            ahead = (int32_t)(drops - e->last_ovfl);
            if (ahead > 0) {
                /* last_ovfl first, then the total: ur_engine_drops() reads
                 * them the other way round from another thread. */
                __atomic_store_n(&e->last_ovfl, drops, __ATOMIC_RELEASE);
                __atomic_store_n(&c->kernel_drops, c->kernel_drops + (uint32_t)ahead,
                                 __ATOMIC_RELEASE);
            }
        } else if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO &&
                   cmsg_holds(h, cm, sizeof(int))) {
            int size;
            memcpy(&size, CMSG_DATA(cm), sizeof size);
            if (size > 0)
                segment = (uint32_t)size;
        } else if (cm->cmsg_level == IPPROTO_IP || cm->cmsg_level == IPPROTO_IPV6) {
            /* Last in the chain: these arrive only with ip_fields. */
            take_ip_field(m, h, cm);
        }
    }
    return segment;
}

/* Count one received datagram and add a record per accepted segment at
 * meta[out..]; its payload starts `base` bytes into the arena. A merged
 * receive is split into segments of the UDP_GRO size (the last may be
 * shorter); any other datagram is one segment. Returns the new `out`. */
static int take_message(ur_engine *e, struct msghdr *h, uint32_t len,
                        size_t base, ur_meta *meta, int out, ur_counters *c)
{
    uint32_t stride, segments, s;
    ur_meta record;

    c->bytes += len;
    if (h->msg_flags & MSG_CTRUNC)
        c->ctrunc++;
    memset(&record, 0, sizeof record);
    stride = take_control(e, &record, h, c);
    if (stride == 0 || stride >= len)
        stride = len;
    else
        record.segment = (uint16_t)stride;
    segments = stride ? (len + stride - 1) / stride : 1;
    c->received += segments;
    if ((h->msg_flags & MSG_TRUNC) || len > h->msg_iov[0].iov_len) {
        c->too_long += segments;  /* never delivered cut short */
        return out;
    }
    ur_sockaddr_take(h->msg_name, h->msg_namelen, &record.family, &record.src_port,
                     record.src);
    for (s = 0; s < segments; s++) {
        uint32_t seglen = s + 1 < segments ? stride : len - s * stride;
        if (seglen > e->max_size || out == (int)e->max_records) {
            c->too_long++;
            continue;
        }
        if (seglen < e->min_size) {
            c->too_short++;
            continue;
        }
        meta[out] = record;
        meta[out].offset = (uint32_t)(base + (size_t)s * stride);
        meta[out].length = seglen;
        out++;
    }
    return out;
}

int ur_engine_recv(ur_engine *e, int fd, unsigned char *arena, ur_meta *meta,
                   ur_counters *c)
{
    unsigned i;
    int n, out = 0;

    /* Reset every call: the kernel rewrites lengths and flags. */
    for (i = 0; i < e->batch; i++) {
        struct msghdr *h = &e->msgs[i].msg_hdr;
        e->iov[i].iov_base = arena + i * e->slot;
        e->iov[i].iov_len = e->gro ? e->slot : e->max_size;
        h->msg_name = &e->names[i];
        h->msg_namelen = sizeof e->names[i];
        h->msg_iov = &e->iov[i];
        h->msg_iovlen = 1;
        h->msg_control = e->control + (size_t)i * UR_CONTROL_SIZE;
        h->msg_controllen = UR_CONTROL_SIZE;
        h->msg_flags = 0;
    }

    /* MSG_TRUNC makes msg_len the datagram's real length. */
    do {
        n = recvmmsg(fd, e->msgs, e->batch, MSG_DONTWAIT | MSG_TRUNC, NULL);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;

    c->batches++;
    for (i = 0; i < (unsigned)n; i++)
        out = take_message(e, &e->msgs[i].msg_hdr, e->msgs[i].msg_len,
                           i * e->slot, meta, out, c);
    return out;
}

int ur_engine_feed(ur_engine *e, const unsigned char *control,
                   size_t controllen, const unsigned char *name,
                   size_t namelen, uint32_t len, int flags, ur_meta *meta,
                   ur_counters *c)
{
    /* Exact-size copies, so a sanitizer sees any read past what was given. */
    unsigned char *ctl = malloc(controllen ? controllen : 1);
    unsigned char *nm = malloc(namelen ? namelen : 1);
    struct iovec iov = {.iov_base = NULL, .iov_len = e->gro ? e->slot : e->max_size};
    struct msghdr h = {0};
    int out = -ENOMEM;

    if (ctl && nm) {
        memcpy(ctl, control, controllen);
        memcpy(nm, name, namelen);
        h.msg_name = nm;
        h.msg_namelen = (socklen_t)namelen;
        h.msg_iov = &iov;
        h.msg_iovlen = 1;
        h.msg_control = ctl;
        h.msg_controllen = controllen;
        h.msg_flags = flags;
        c->batches++;
        out = take_message(e, &h, len, 0, meta, 0, c);
    }
    free(ctl);
    free(nm);
    return out;
}

int ur_wait(int fd, int wake_fd, int timeout_ms)
{
    struct pollfd p[2] = {
        {.fd = fd, .events = POLLIN},
        {.fd = wake_fd, .events = POLLIN},
    };
    int r = poll(p, wake_fd >= 0 ? 2 : 1, timeout_ms);
    if (r < 0)
        return -errno;
    if (p[0].revents & POLLIN)
        return 1;
    return (p[0].revents & POLLERR) ? 2 : 0;
}

uint64_t ur_engine_drops(const ur_engine *e, const ur_counters *c, uint32_t now)
{
    /* Total first: if it includes a datagram's count, last_ovfl does too
     * (stored before it), so a race can only leave a drop out until the
     * next call, never count one twice. */
    uint64_t told = __atomic_load_n(&c->kernel_drops, __ATOMIC_ACQUIRE);
    uint32_t last = __atomic_load_n(&e->last_ovfl, __ATOMIC_ACQUIRE);
    int32_t ahead = (int32_t)(now - last);
    return told + (ahead > 0 ? (uint32_t)ahead : 0);
}
