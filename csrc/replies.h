/* The reply path: datagrams sent from a chosen local address and interface
 * (IP_PKTINFO / IPV6_PKTINFO), queued and sent in sendmmsg() calls, runs of
 * equal-sized datagrams to one peer merged with UDP_SEGMENT (GSO), and the
 * socket's error queue (IP_RECVERR).  Plain C, no Python. */
#ifndef UDP_READER_REPLIES_H
#define UDP_READER_REPLIES_H

#include <stddef.h>
#include <stdint.h>

#include "constants.h"

/* Where one datagram goes and where it leaves from.  Addresses in network
 * byte order, IPv4 in the first four bytes.  Zero every field first: queued
 * peers are compared whole. */
typedef struct ur_peer {
    uint8_t addr[16];       /* destination */
    uint8_t local[16];      /* source address to send from */
    uint32_t ifindex;       /* outgoing interface, 0: the route's */
    uint16_t family;        /* AF_INET or AF_INET6, of addr and local */
    uint16_t port;          /* destination port, host byte order */
    uint8_t has_local;      /* 0: the kernel picks the source */
    uint8_t reserved[3];
} ur_peer;

typedef struct ur_send_counters {
    uint64_t sent;          /* datagrams the kernel took */
    uint64_t errors;        /* datagrams refused, and errors read back */
} ur_send_counters;

/* Datagrams waiting to be sent, their payloads copied into an arena. */
typedef struct ur_replies {
    int family;             /* the socket's */
    int gso;                /* 1: merge runs with UDP_SEGMENT; 0: never */
    int gso_refused;        /* set when the kernel refused GSO (then gso = 0) */
    unsigned capacity;      /* datagrams */
    unsigned count;
    size_t arena_size, used;
    ur_peer *peers;
    uint32_t *lengths;
    size_t *offsets;        /* where each payload starts in the arena */
    int *status;            /* per datagram after a flush: 0 or an errno */
    unsigned char *arena;
    struct mmsghdr *msgs;   /* per message, built by a flush */
    struct iovec *iov;
    unsigned char *names;   /* a sockaddr_in6 per message */
    unsigned char *control;
    unsigned *first;        /* message -> its first datagram */
    unsigned *segments;     /* message -> how many datagrams it carries */
} ur_replies;

/* GSO: bytes per message (datagrams per message: UR_GSO_SEGMENTS). */
#define UR_GSO_BYTES 65000
/* A full socket buffer (EAGAIN): how long one flush waits for room, in
 * slices, before it counts what is left as failed. */
#define UR_SEND_WAIT_MS 10
#define UR_SEND_WAITS 5

int ur_replies_init(ur_replies *r, int family, unsigned capacity,
                    size_t arena_size, int gso);
void ur_replies_free(ur_replies *r);

/* True when a datagram of `len` bytes fits without a flush first. */
int ur_replies_room(const ur_replies *r, uint32_t len);

/* Queue a copy of `data`; -ENOBUFS when there is no room (flush first). */
int ur_replies_add(ur_replies *r, const ur_peer *to, const void *data,
                   uint32_t len);

/* Send everything queued in sendmmsg calls and empty the queue.  Every
 * datagram's outcome is in r->status (read it before the next add); the
 * counters gain what was sent and what failed.  Returns how many failed. */
unsigned ur_replies_flush(ur_replies *r, int fd, ur_send_counters *c);

/* One datagram now, without a queue (safe from any thread).  Returns 0 or
 * -errno; EAGAIN is waited out as in a flush. */
int ur_send_one(int fd, int family, const ur_peer *to, const void *data,
                size_t len);

/* One entry of the socket's error queue (IP_RECVERR / IPV6_RECVERR). */
typedef struct ur_send_error {
    int err;                /* the errno it stands for */
    uint32_t info;          /* the path MTU for EMSGSIZE */
    uint8_t origin;         /* SO_EE_ORIGIN_*: LOCAL, ICMP, ICMP6 */
    uint8_t type, code;     /* of the ICMP message */
    uint8_t reserved;
    uint16_t family, port;  /* the failed datagram's destination */
    uint8_t addr[16];
} ur_send_error;

/* Ask for send errors on the error queue (both levels on a dual-stack
 * socket).  Returns 0 or -errno. */
int ur_enable_recverr(int fd, int family);

/* Read up to `max` entries from the error queue without waiting, and clear
 * the pending socket error.  Returns how many, or -errno. */
int ur_read_errors(int fd, ur_send_error *out, unsigned max);

/* True for the errors an ICMP message leaves pending on a socket with
 * IP_RECVERR, which the next receive returns instead of data. */
int ur_async_error(int err);

/* True when the kernel takes UDP_SEGMENT on this socket (probed once). */
int ur_probe_gso(int fd);

#endif
