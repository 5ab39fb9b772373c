/*
 * vxlanpy fast path, batched syscalls: one Python->C crossing sends a whole batch.
 *
 * vx_send_batch writes the 8-byte UDP header into the headroom in front of each slot's VXLAN
 * header (source port from sport[i], checksum 0: the kernel fills it for IPv6 raw sockets with
 * IPV6_CHECKSUM, and RFC 7348 allows 0 over IPv4) and sends slots first..first+n-1 to one
 * destination with sendmmsg(2) on a raw IPPROTO_UDP socket. Returns the number of datagrams
 * the kernel took, or -errno if it took none.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define VX_HLEN 8
#define VX_UDP_HLEN 8
#define VX_CHUNK 64

int vx_send_batch(int fd, uint8_t *buf, uint32_t slot, uint32_t headroom, uint32_t first,
                  uint32_t n, const uint32_t *payload_len, const uint16_t *sport, uint16_t dport,
                  const void *addr, uint32_t addrlen)
{
    struct mmsghdr msgs[VX_CHUNK];
    struct iovec iov[VX_CHUNK];
    uint32_t done = 0;
    if (headroom < VX_HLEN + VX_UDP_HLEN)
        return -EINVAL;
    while (done < n) {
        uint32_t k = n - done < VX_CHUNK ? n - done : VX_CHUNK;
        for (uint32_t j = 0; j < k; j++) {
            uint32_t i = first + done + j;
            uint8_t *u = buf + (size_t)i * slot + headroom - VX_HLEN - VX_UDP_HLEN;
            uint32_t len = payload_len[i] + VX_UDP_HLEN;
            u[0] = (uint8_t)(sport[i] >> 8);
            u[1] = (uint8_t)sport[i];
            u[2] = (uint8_t)(dport >> 8);
            u[3] = (uint8_t)dport;
            u[4] = (uint8_t)(len >> 8);
            u[5] = (uint8_t)len;
            u[6] = u[7] = 0;
            iov[j].iov_base = u;
            iov[j].iov_len = len;
            memset(&msgs[j], 0, sizeof(msgs[j]));
            msgs[j].msg_hdr.msg_name = (void *)addr;
            msgs[j].msg_hdr.msg_namelen = addrlen;
            msgs[j].msg_hdr.msg_iov = &iov[j];
            msgs[j].msg_hdr.msg_iovlen = 1;
        }
        int r = sendmmsg(fd, msgs, k, MSG_DONTWAIT);
        if (r < 0)
            return done ? (int)done : -errno;
        done += (uint32_t)r;
        if ((uint32_t)r < k)
            break;
    }
    return (int)done;
}
