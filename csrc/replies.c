#define _GNU_SOURCE
#include "replies.h"
#include "engine.h"

#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <linux/errqueue.h>  /* after time.h: it uses struct timespec */

/* Room for a pktinfo and a UDP_SEGMENT control message. */
#define UR_REPLY_CONTROL 64

typedef union {
    struct cmsghdr align;
    unsigned char bytes[UR_REPLY_CONTROL];
} control_buffer;

int ur_replies_init(ur_replies *r, int family, unsigned capacity,
                    size_t arena_size, int gso)
{
    memset(r, 0, sizeof *r);
    r->family = family;
    r->gso = gso;
    r->capacity = capacity;
    r->arena_size = arena_size;
    r->peers = calloc(capacity, sizeof *r->peers);
    r->lengths = calloc(capacity, sizeof *r->lengths);
    r->offsets = calloc(capacity, sizeof *r->offsets);
    r->status = calloc(capacity, sizeof *r->status);
    r->arena = malloc(arena_size ? arena_size : 1);
    r->msgs = calloc(capacity, sizeof *r->msgs);
    r->iov = calloc(capacity, sizeof *r->iov);
    r->names = calloc(capacity, sizeof(struct sockaddr_in6));
    r->control = calloc(capacity, UR_REPLY_CONTROL);
    r->first = calloc(capacity, sizeof *r->first);
    r->segments = calloc(capacity, sizeof *r->segments);
    if (!r->peers || !r->lengths || !r->offsets || !r->status || !r->arena ||
        !r->msgs || !r->iov || !r->names || !r->control || !r->first ||
        !r->segments) {
        ur_replies_free(r);
        return -ENOMEM;
    }
    return 0;
}

void ur_replies_free(ur_replies *r)
{
    free(r->peers);
    free(r->lengths);
    free(r->offsets);
    free(r->status);
    free(r->arena);
    free(r->msgs);
    free(r->iov);
    free(r->names);
    free(r->control);
    free(r->first);
    free(r->segments);
    memset(r, 0, sizeof *r);
}

int ur_replies_room(const ur_replies *r, uint32_t len)
{
    return r->count < r->capacity && r->used + len <= r->arena_size;
}

int ur_replies_add(ur_replies *r, const ur_peer *to, const void *data,
                   uint32_t len)
{
    if (!ur_replies_room(r, len))
        return -ENOBUFS;
    memcpy(r->arena + r->used, data, len);
    r->peers[r->count] = *to;
    r->lengths[r->count] = len;
    r->offsets[r->count] = r->used;
    r->used += len;
    r->count++;
    return 0;
}

/* A received destination can be a multicast or broadcast address, which no
 * datagram may come from: then the kernel picks the source. */
static int usable_source(const ur_peer *to)
{
    static const uint8_t zero[16];
    if (!to->has_local)
        return 0;
    if (to->family == AF_INET)
        return memcmp(to->local, zero, 4) != 0 && (to->local[0] & 0xf0) != 0xe0 &&
               !(to->local[0] == 255 && to->local[1] == 255 &&
                 to->local[2] == 255 && to->local[3] == 255);
    return memcmp(to->local, zero, 16) != 0 && to->local[0] != 0xff;
}

static void mapped(uint8_t out[16], const uint8_t v4[4])
{
    memset(out, 0, 16);
    out[10] = out[11] = 0xff;
    memcpy(out + 12, v4, 4);
}

/* Fill one message: destination name, payload, pktinfo for the source and
 * interface, UDP_SEGMENT when `segment` is not 0.  `name` has room for a
 * sockaddr_in6, `control` for UR_REPLY_CONTROL aligned bytes. */
static void build(int sock_family, const ur_peer *to, struct msghdr *h,
                  struct iovec *iov, unsigned char *name,
                  unsigned char *control, const void *data, size_t len,
                  uint16_t segment)
{
    int local = usable_source(to);
    size_t controllen = 0;
    struct cmsghdr *cm = (struct cmsghdr *)control;

    memset(h, 0, sizeof *h);
    iov->iov_base = (void *)data;
    iov->iov_len = len;
    h->msg_iov = iov;
    h->msg_iovlen = 1;
    h->msg_name = name;
    if (sock_family == AF_INET) {
        struct sockaddr_in sin;
        memset(&sin, 0, sizeof sin);
        sin.sin_family = AF_INET;
        sin.sin_port = htons(to->port);
        memcpy(&sin.sin_addr, to->addr, 4);
        memcpy(name, &sin, sizeof sin);
        h->msg_namelen = sizeof sin;
    } else {
        struct sockaddr_in6 sin6;
        memset(&sin6, 0, sizeof sin6);
        sin6.sin6_family = AF_INET6;
        sin6.sin6_port = htons(to->port);
        if (to->family == AF_INET) {
            mapped(sin6.sin6_addr.s6_addr, to->addr);
        } else {
            memcpy(&sin6.sin6_addr, to->addr, 16);
            if (IN6_IS_ADDR_LINKLOCAL(&sin6.sin6_addr))
                sin6.sin6_scope_id = to->ifindex;
        }
        memcpy(name, &sin6, sizeof sin6);
        h->msg_namelen = sizeof sin6;
    }

    if (local || to->ifindex) {
        if (sock_family == AF_INET) {
            struct in_pktinfo pi;
            memset(&pi, 0, sizeof pi);
            pi.ipi_ifindex = (int)to->ifindex;
            if (local)
                memcpy(&pi.ipi_spec_dst, to->local, 4);  /* the source */
            cm->cmsg_level = IPPROTO_IP;
            cm->cmsg_type = IP_PKTINFO;
            cm->cmsg_len = CMSG_LEN(sizeof pi);
            memcpy(CMSG_DATA(cm), &pi, sizeof pi);
            controllen = CMSG_SPACE(sizeof pi);
        } else {
            struct in6_pktinfo pi;
            static const uint8_t any4[4];
            memset(&pi, 0, sizeof pi);
            pi.ipi6_ifindex = to->ifindex;
            /* IPv4 on a dual-stack socket: the kernel takes only a mapped
             * source (::ffff:0.0.0.0 lets it pick). */
            if (to->family == AF_INET)
                mapped(pi.ipi6_addr.s6_addr, local ? to->local : any4);
            else if (local)
                memcpy(&pi.ipi6_addr, to->local, 16);
            cm->cmsg_level = IPPROTO_IPV6;
            cm->cmsg_type = IPV6_PKTINFO;
            cm->cmsg_len = CMSG_LEN(sizeof pi);
            memcpy(CMSG_DATA(cm), &pi, sizeof pi);
            controllen = CMSG_SPACE(sizeof pi);
        }
    }
    if (segment) {
        cm = (struct cmsghdr *)(control + controllen);
        cm->cmsg_level = SOL_UDP;
        cm->cmsg_type = UDP_SEGMENT;
        cm->cmsg_len = CMSG_LEN(sizeof segment);
        memcpy(CMSG_DATA(cm), &segment, sizeof segment);
        controllen += CMSG_SPACE(sizeof segment);
    }
    h->msg_control = controllen ? control : NULL;
    h->msg_controllen = controllen;
}

/* Wait for room in the send buffer while `*waits` lasts.  Returns 1 to
 * try again, 0 when the budget is spent. */
static int wait_room(int fd, int *waits)
{
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    if (*waits <= 0)
        return 0;
    (*waits)--;
    poll(&p, 1, UR_SEND_WAIT_MS);
    return 1;
}

/* sendmsg, riding out EINTR, (within the budget) EAGAIN, and once an
 * ICMP error an earlier datagram left pending: the kernel returns that
 * from the next send, unsent, and forgets it. */
static int send_waiting(int fd, const struct msghdr *h, int *waits)
{
    int retried = 0;
    for (;;) {
        if (sendmsg(fd, h, MSG_DONTWAIT) >= 0)
            return 0;
        if (errno == EINTR)
            continue;
        if ((errno == EAGAIN || errno == EWOULDBLOCK) && wait_room(fd, waits))
            continue;
        if (ur_async_error(errno) && !retried) {
            retried = 1;
            continue;
        }
        return -errno;
    }
}

/* Datagrams of message m one at a time, without GSO. */
static void send_apart(ur_replies *r, int fd, unsigned m, int *waits,
                       ur_send_counters *c)
{
    unsigned k;
    for (k = r->first[m]; k < r->first[m] + r->segments[m]; k++) {
        struct msghdr h;
        struct iovec iov;
        struct sockaddr_in6 name;
        control_buffer control;
        build(r->family, &r->peers[k], &h, &iov, (unsigned char *)&name,
              control.bytes, r->arena + r->offsets[k], r->lengths[k], 0);
        r->status[k] = -send_waiting(fd, &h, waits);
        if (r->status[k])
            c->errors++;
        else
            c->sent++;
    }
}

/* Datagrams from i on that one GSO message can carry: same peer, same
 * size, a shorter last one allowed. */
static unsigned run_length(const ur_replies *r, unsigned i)
{
    uint32_t size = r->lengths[i];
    size_t total = size;
    unsigned n = 1;

    if (size == 0)
        return 1;
    while (i + n < r->count && n < UR_GSO_SEGMENTS) {
        uint32_t len = r->lengths[i + n];
        if (len == 0 || len > size || total + len > UR_GSO_BYTES ||
            memcmp(&r->peers[i + n], &r->peers[i], sizeof(ur_peer)) != 0)
            break;
        total += len;
        n++;
        if (len < size)
            break;
    }
    return n;
}

static void settle(ur_replies *r, unsigned m, int status, ur_send_counters *c)
{
    unsigned k;
    for (k = r->first[m]; k < r->first[m] + r->segments[m]; k++)
        r->status[k] = status;
    if (status)
        c->errors += r->segments[m];
    else
        c->sent += r->segments[m];
}

unsigned ur_replies_flush(ur_replies *r, int fd, ur_send_counters *c)
{
    unsigned i = 0, m = 0, done = 0, failed = 0, k, retried = UINT_MAX;
    int waits = UR_SEND_WAITS;
    uint64_t errors_before = c->errors;

    while (i < r->count) {
        unsigned n = r->gso ? run_length(r, i) : 1;
        size_t len = 0;
        for (k = i; k < i + n; k++)
            len += r->lengths[k];  /* contiguous in the arena */
        r->first[m] = i;
        r->segments[m] = n;
        build(r->family, &r->peers[i], &r->msgs[m].msg_hdr, &r->iov[m],
              r->names + (size_t)m * sizeof(struct sockaddr_in6),
              r->control + (size_t)m * UR_REPLY_CONTROL,
              r->arena + r->offsets[i], len,
              n > 1 ? (uint16_t)r->lengths[i] : 0);
        i += n;
        m++;
    }

    while (done < m) {
        int sent = sendmmsg(fd, r->msgs + done, m - done, MSG_DONTWAIT);
        int err;
        if (sent > 0) {
            for (k = done; k < done + (unsigned)sent; k++)
                settle(r, k, 0, c);
            done += (unsigned)sent;
            continue;
        }
        err = sent < 0 ? errno : EIO;
        if (err == EINTR)
            continue;
        if ((err == EAGAIN || err == EWOULDBLOCK) && wait_room(fd, &waits))
            continue;
        if (ur_async_error(err) && retried != done) {
            retried = done;  /* maybe an earlier datagram's ICMP error */
            continue;
        }
        if (r->segments[done] > 1) {
            /* The kernel or the device refuses GSO (quinn#1128): stop
             * merging.  Whatever the error, the run's datagrams go one by
             * one, so each gets its own outcome. */
            if (err == EIO || err == EINVAL) {
                r->gso = 0;
                r->gso_refused = 1;
            }
            send_apart(r, fd, done, &waits, c);
        } else {
            settle(r, done, err, c);
        }
        done++;
    }
    failed = (unsigned)(c->errors - errors_before);
    r->count = 0;
    r->used = 0;
    return failed;
}

int ur_send_one(int fd, int family, const ur_peer *to, const void *data,
                size_t len)
{
    struct msghdr h;
    struct iovec iov;
    struct sockaddr_in6 name;
    control_buffer control;
    int waits = UR_SEND_WAITS;

    build(family, to, &h, &iov, (unsigned char *)&name, control.bytes, data,
          len, 0);
    return send_waiting(fd, &h, &waits);
}

int ur_enable_recverr(int fd, int family)
{
    int on = 1;
    if (setsockopt(fd, IPPROTO_IP, IP_RECVERR, &on, sizeof on) < 0 &&
        family == AF_INET)
        return -errno;
    if (family == AF_INET6 &&
        setsockopt(fd, IPPROTO_IPV6, IPV6_RECVERR, &on, sizeof on) < 0)
        return -errno;
    return 0;
}


int ur_read_errors(int fd, ur_send_error *out, unsigned max)
{
    unsigned count = 0;
    int pending;
    socklen_t size = sizeof pending;

    while (count < max) {
        struct sockaddr_in6 name;
        union {
            struct cmsghdr align;
            unsigned char bytes[512];
        } control;
        unsigned char byte;
        struct iovec iov = {.iov_base = &byte, .iov_len = 1};
        struct msghdr h = {0};
        struct cmsghdr *cm;
        ur_send_error *e = &out[count];

        h.msg_name = &name;
        h.msg_namelen = sizeof name;
        h.msg_iov = &iov;
        h.msg_iovlen = 1;
        h.msg_control = control.bytes;
        h.msg_controllen = sizeof control.bytes;
        if (recvmsg(fd, &h, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return count ? (int)count : -errno;
        }
        memset(e, 0, sizeof *e);
        ur_sockaddr_take(&name, h.msg_namelen, &e->family, &e->port, e->addr);
        for (cm = CMSG_FIRSTHDR(&h); cm; cm = CMSG_NXTHDR(&h, cm)) {
            struct sock_extended_err ee;
            if (!((cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_RECVERR) ||
                  (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_RECVERR)))
                continue;
            if (cm->cmsg_len < CMSG_LEN(sizeof ee) ||
                CMSG_DATA(cm) + sizeof ee > control.bytes + h.msg_controllen)
                continue;
            memcpy(&ee, CMSG_DATA(cm), sizeof ee);
            e->err = (int)ee.ee_errno;
            e->origin = ee.ee_origin;
            e->type = ee.ee_type;
            e->code = ee.ee_code;
            e->info = ee.ee_info;
        }
        count++;
    }
    /* The last ICMP error also waits as the socket's pending error, which
     * the next receive would return instead of data: it is read above. */
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &pending, &size);
    return (int)count;
}

int ur_async_error(int err)
{
    size_t i;

    for (i = 0; i < UR_ASYNC_ERROR_COUNT; i++)
        if (err == ur_async_errors[i])
            return 1;
    return 0;
}

int ur_probe_gso(int fd)
{
    int value = 0;
    socklen_t size = sizeof value;
    return getsockopt(fd, SOL_UDP, UDP_SEGMENT, &value, &size) == 0;
}
