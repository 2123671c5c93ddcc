/* The limit to compare against: a plain C loop draining a UDP queue with
 * recvmmsg, no Python per packet.  Built by bench/conftest.py. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>

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
