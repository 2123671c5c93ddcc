/* The limits the compiled core and the Python layer share, and the Linux
 * values older C headers lack, each declared once: the C files include this
 * header, and Python reads the same values from udp_reader._constants
 * (constants.pxd).  Plain C, no Python. */
#ifndef UDP_READER_CONSTANTS_H
#define UDP_READER_CONSTANTS_H

#include <errno.h>
#include <sys/socket.h>

/* The largest payload of one datagram: over IPv4 65535 - 20 (IP header)
 * - 8 (UDP header); over IPv6 (no jumbograms) 65535 - 8, the IPv6 header
 * is not counted in its payload length. */
#define UR_MAX_PAYLOAD4 65507
#define UR_MAX_PAYLOAD6 65527
/* A UDP length field's limit: the length window may reach it. */
#define UR_MAX_LENGTH 65535

/* Messages per recvmmsg or sendmmsg call at most. */
#define UR_MAX_BATCH 1024

/* Bytes of control data per received message: room for every option we
 * enable at once, so MSG_CTRUNC only ever means a kernel surprise.  The most
 * that arrives together, an IPv4 datagram on a dual-stack socket on x86-64:
 * IPV6_PKTINFO 40 + SCM_TIMESTAMPNS 32 + SO_RXQ_OVFL 24 + UDP_GRO 24 +
 * IP_TTL 24 + IP_TOS 24 = 168 bytes (an AF_INET socket: IP_PKTINFO 32). */
#define UR_CONTROL_SIZE 256
/* A merged (UDP_GRO) receive, or the largest datagram: at most 64 KiB. */
#define UR_GRO_BUFFER 65536
/* GSO: datagrams per message; every kernel with UDP_SEGMENT takes 64. */
#define UR_GSO_SEGMENTS 64

/* What an ICMP error for an earlier send makes the next receive return
 * instead of data (always on a connected socket, and on any with
 * IP_RECVERR): not a failed receive. */
static const int ur_async_errors[] __attribute__((unused)) = {
    ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, EMSGSIZE, ENOPROTOOPT, EOPNOTSUPP,
    ENONET, EHOSTDOWN, EACCES, EPROTO, ENETDOWN,
};
#define UR_ASYNC_ERROR_COUNT (sizeof ur_async_errors / sizeof ur_async_errors[0])

/* Linux ABI values, for C headers too old to name them. */
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef SO_RXQ_OVFL
#define SO_RXQ_OVFL 40
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#endif
