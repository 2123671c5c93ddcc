/* The limit to compare against: a plain C loop draining a UDP queue with
 * recvmmsg, no Python per packet.  Built by bench/conftest.py. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif

#define MAX_BATCH 1024
#define SLOT 2048

long drain(int fd, long count, int batch)
{
    static struct mmsghdr msgs[MAX_BATCH];
    static struct iovec iov[MAX_BATCH];
    static struct sockaddr_storage names[MAX_BATCH];
    static char control[MAX_BATCH][256];
    static char buf[MAX_BATCH][SLOT];
    long got = 0;

    if (batch > MAX_BATCH)
        batch = MAX_BATCH;
    while (got < count) {
        int i, n;
        for (i = 0; i < batch; i++) {
            iov[i].iov_base = buf[i];
            iov[i].iov_len = SLOT;
            msgs[i].msg_hdr.msg_name = &names[i];
            msgs[i].msg_hdr.msg_namelen = sizeof names[i];
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = control[i];
            msgs[i].msg_hdr.msg_controllen = sizeof control[i];
            msgs[i].msg_hdr.msg_flags = 0;
        }
        n = recvmmsg(fd, msgs, batch, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        got += n;
    }
    return got;
}

/* The same with UDP_GRO on the socket: counts the segments of every
 * merged receive from its UDP_GRO control message, as a reader must. */
long drain_gro(int fd, long segments, int batch)
{
    static struct mmsghdr msgs[MAX_BATCH];
    static struct iovec iov[MAX_BATCH];
    static char control[MAX_BATCH][256];
    static char buf[MAX_BATCH][65536];
    long got = 0;

    if (batch > MAX_BATCH)
        batch = MAX_BATCH;
    while (got < segments) {
        int i, n;
        for (i = 0; i < batch; i++) {
            iov[i].iov_base = buf[i];
            iov[i].iov_len = sizeof buf[i];
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = control[i];
            msgs[i].msg_hdr.msg_controllen = sizeof control[i];
        }
        n = recvmmsg(fd, msgs, batch, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (i = 0; i < n; i++) {
            struct cmsghdr *cm;
            int size = 0;
            unsigned len = msgs[i].msg_len;
            for (cm = CMSG_FIRSTHDR(&msgs[i].msg_hdr); cm;
                 cm = CMSG_NXTHDR(&msgs[i].msg_hdr, cm))
                if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == 104)
                    memcpy(&size, CMSG_DATA(cm), sizeof size);
            got += size > 0 ? (len + size - 1) / size : 1;
        }
    }
    return got;
}
