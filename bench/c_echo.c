/* The limit for an echo server: a plain C loop that receives a batch with
 * recvmmsg and sends every datagram back with sendmmsg, from the address it
 * came to (IP_PKTINFO), straight from the receive buffers.  No Python per
 * packet.  Built by bench/test_echo.py. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_BATCH 1024
#define SLOT 2048
#define CONTROL 256

long echo(int fd, long count, int batch)
{
    static struct mmsghdr in[MAX_BATCH], out[MAX_BATCH];
    static struct iovec iov[MAX_BATCH], out_iov[MAX_BATCH];
    static struct sockaddr_storage names[MAX_BATCH];
    static union {
        struct cmsghdr align;
        char bytes[CONTROL];
    } control[MAX_BATCH], reply_control[MAX_BATCH];
    static char buf[MAX_BATCH][SLOT];
    long done = 0;

    if (batch > MAX_BATCH)
        batch = MAX_BATCH;
    while (done < count) {
        int i, n, sent = 0;
        for (i = 0; i < batch; i++) {
            iov[i].iov_base = buf[i];
            iov[i].iov_len = SLOT;
            memset(&in[i].msg_hdr, 0, sizeof in[i].msg_hdr);
            in[i].msg_hdr.msg_name = &names[i];
            in[i].msg_hdr.msg_namelen = sizeof names[i];
            in[i].msg_hdr.msg_iov = &iov[i];
            in[i].msg_hdr.msg_iovlen = 1;
            in[i].msg_hdr.msg_control = control[i].bytes;
            in[i].msg_hdr.msg_controllen = CONTROL;
        }
        n = recvmmsg(fd, in, batch, MSG_DONTWAIT, NULL);
        if (n < 0) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN && poll(&p, 1, 1000) > 0)
                continue;
            break;
        }
        for (i = 0; i < n; i++) {
            struct msghdr *h = &in[i].msg_hdr, *r = &out[i].msg_hdr;
            struct cmsghdr *cm, *rc = &reply_control[i].align;
            struct in_pktinfo pi;
            memset(&pi, 0, sizeof pi);
            for (cm = CMSG_FIRSTHDR(h); cm; cm = CMSG_NXTHDR(h, cm))
                if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_PKTINFO)
                    memcpy(&pi, CMSG_DATA(cm), sizeof pi);
            pi.ipi_spec_dst = pi.ipi_addr;  /* answer from where it came to */
            pi.ipi_addr.s_addr = 0;
            out_iov[i].iov_base = buf[i];
            out_iov[i].iov_len = in[i].msg_len;
            memset(r, 0, sizeof *r);
            r->msg_name = &names[i];
            r->msg_namelen = h->msg_namelen;
            r->msg_iov = &out_iov[i];
            r->msg_iovlen = 1;
            r->msg_control = rc;
            r->msg_controllen = CMSG_SPACE(sizeof pi);
            rc->cmsg_level = IPPROTO_IP;
            rc->cmsg_type = IP_PKTINFO;
            rc->cmsg_len = CMSG_LEN(sizeof pi);
            memcpy(CMSG_DATA(rc), &pi, sizeof pi);
        }
        while (sent < n) {
            int k = sendmmsg(fd, out + sent, n - sent, 0);
            if (k < 0) {
                if (errno == EINTR)
                    continue;
                sent++;  /* skip the one refused */
                continue;
            }
            sent += k;
        }
        done += n;
    }
    return done;
}
