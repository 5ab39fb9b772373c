/*
 * vxlanpy fast path, batched syscalls: one Python->C crossing sends a whole batch.
 *
 * Payloads are the VXLAN header + frame of slots first..first+n-1 (at headroom - 8, length
 * payload_len[i]); they go to one destination on a UDP socket bound to the flow's source port.
 *
 * vx_send_batch: sendmmsg(2), one datagram per slot.
 * vx_send_gso:   sendmsg(2) with UDP_SEGMENT: the payloads (all payload_len[first] bytes but
 *                possibly the last) leave as one GSO skb that the kernel cuts into datagrams;
 *                chunks respect the 64-segment and 64 KiB limits of UDP GSO.
 * Both return how many datagrams the kernel took, or -errno if it took none.
 *
 * The send sockets have IP_RECVERR on: an ICMP error that reaches one (port unreachable, ...)
 * waits in its error queue, where vxlanpy counts it, and also fails the next send on that
 * socket once with its errno, whichever remote that send was for. A send that fails while the
 * error queue holds a report is therefore tried again, once: the report is counted once (from
 * the queue) and the datagram is not lost.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>

#include "_fastpath.h"
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#define VX_HLEN 8
#define VX_CHUNK 64
#define VX_GSO_MAX_SEGS 64
#define VX_GSO_MAX_BYTES 65000

/* After a failed send on fd (errno set): 1 to send again, once, when the error may be a queued
 * ICMP report surfacing (see the top comment); else 0, with the errno in *err. */
static int send_again(int fd, int *retried, int *err)
{
    *err = errno;
    if (*retried || *err == EAGAIN || *err == EWOULDBLOCK || *err == ENOBUFS || *err == EINTR)
        return 0;
    struct pollfd p = {.fd = fd, .events = 0, .revents = 0};
    if (poll(&p, 1, 0) != 1 || !(p.revents & POLLERR))
        return 0;
    *retried = 1;
    return 1;
}

int vx_send_batch(int fd, uint8_t *buf, uint32_t slot, uint32_t headroom, uint32_t first,
                  uint32_t n, const uint32_t *payload_len, const void *addr, uint32_t addrlen)
{
    struct mmsghdr msgs[VX_CHUNK];
    struct iovec iov[VX_CHUNK];
    uint32_t done = 0;
    int retried = 0;
    if (headroom < VX_HLEN)
        return -EINVAL;
    while (done < n) {
        uint32_t k = n - done < VX_CHUNK ? n - done : VX_CHUNK;
        for (uint32_t j = 0; j < k; j++) {
            uint32_t i = first + done + j;
            iov[j].iov_base = buf + (size_t)i * slot + headroom - VX_HLEN;
            iov[j].iov_len = payload_len[i];
            memset(&msgs[j], 0, sizeof(msgs[j]));
            msgs[j].msg_hdr.msg_name = (void *)addr;
            msgs[j].msg_hdr.msg_namelen = addrlen;
            msgs[j].msg_hdr.msg_iov = &iov[j];
            msgs[j].msg_hdr.msg_iovlen = 1;
        }
        int r = sendmmsg(fd, msgs, k, MSG_DONTWAIT);
        int e = 0;
        if (r < 0 && send_again(fd, &retried, &e))
            continue;
        if (r < 0)
            return done ? (int)done : -e;
        /* fewer than k: the buffer is full or the next datagram failed; the next round says */
        if (r == 0)
            break;
        retried = 0;
        done += (uint32_t)r;
    }
    return (int)done;
}

int vx_send_gso(int fd, uint8_t *buf, uint32_t slot, uint32_t headroom, uint32_t first,
                uint32_t n, const uint32_t *payload_len, const void *addr, uint32_t addrlen)
{
    struct iovec iov[VX_GSO_MAX_SEGS];
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctrl;
    uint32_t done = 0;
    int retried = 0;
    if (headroom < VX_HLEN || n == 0)
        return n == 0 ? 0 : -EINVAL;
    uint32_t seg = payload_len[first];
    if (seg == 0 || seg > 0xFFFF)
        return -EINVAL;
    while (done < n) {
        uint32_t k = 0, bytes = 0;
        while (done + k < n && k < VX_GSO_MAX_SEGS) {
            uint32_t len = payload_len[first + done + k];
            if (bytes + len > VX_GSO_MAX_BYTES || len > seg)
                break;
            iov[k].iov_base = buf + (size_t)(first + done + k) * slot + headroom - VX_HLEN;
            iov[k].iov_len = len;
            bytes += len;
            k++;
            if (len < seg) /* a short segment ends a GSO chunk */
                break;
        }
        if (k == 0)
            return done ? (int)done : -EINVAL;
        struct msghdr msg;
        memset(&msg, 0, sizeof(msg));
        msg.msg_name = (void *)addr;
        msg.msg_namelen = addrlen;
        msg.msg_iov = iov;
        msg.msg_iovlen = k;
        if (k > 1) {
            memset(&ctrl, 0, sizeof(ctrl));
            msg.msg_control = ctrl.buf;
            msg.msg_controllen = sizeof(ctrl.buf);
            struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
            cm->cmsg_level = SOL_UDP;
            cm->cmsg_type = UDP_SEGMENT;
            cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t gso = (uint16_t)seg;
            memcpy(CMSG_DATA(cm), &gso, sizeof(gso));
        }
        ssize_t r = sendmsg(fd, &msg, MSG_DONTWAIT);
        int e = 0;
        if (r < 0 && send_again(fd, &retried, &e))
            continue;
        if (r < 0)
            return done ? (int)done : -e;
        retried = 0;
        done += k;
    }
    return (int)done;
}

#include <unistd.h>

/*
 * Turn an oversized TCP frame (a super-frame a kernel peer sent as one tunnel-GSO packet) into
 * a GSO frame for the TAP: fill the 10-byte virtio-net header at h (NEEDS_CSUM, TCPV4/TCPV6,
 * gso_size = the MSS that fits `mtu`) and put the pseudo-header sum in the TCP checksum field,
 * as CHECKSUM_PARTIAL wants. The kernel then segments it wherever it must (a bridge port, a
 * forwarding route). Returns 0 (h untouched) for anything else: not IPv4/IPv6 + TCP, a
 * fragment, lengths that do not add up, or a payload that fits one segment anyway.
 */
static int gso_header(uint8_t *f, uint32_t len, uint32_t mtu, uint8_t *h)
{
    uint32_t l3 = 14, l4, iphl, plen;
    uint64_t sum = 0;
    uint8_t type;
    if (len < 14 + 40)
        return 0;
    uint16_t et = (uint16_t)((f[12] << 8) | f[13]);
    if (et == 0x0800 && (f[l3] >> 4) == 4) {
        iphl = (uint32_t)(f[l3] & 15) * 4;
        uint32_t tot = ((uint32_t)f[l3 + 2] << 8) | f[l3 + 3];
        if (iphl < 20 || tot > len - 14 || tot < iphl + 20 || f[l3 + 9] != 6)
            return 0;
        if ((((uint32_t)f[l3 + 6] << 8) | f[l3 + 7]) & 0x3FFF)
            return 0; /* a fragment */
        plen = tot - iphl;
        for (int k = 12; k < 20; k += 2)
            sum += ((uint32_t)f[l3 + k] << 8) | f[l3 + k + 1];
        type = 1; /* VIRTIO_NET_HDR_GSO_TCPV4 */
    } else if (et == 0x86DD && (f[l3] >> 4) == 6) {
        iphl = 40;
        plen = ((uint32_t)f[l3 + 4] << 8) | f[l3 + 5];
        if (f[l3 + 6] != 6 || plen > len - 14 - 40 || plen < 20)
            return 0;
        for (int k = 8; k < 40; k += 2)
            sum += ((uint32_t)f[l3 + k] << 8) | f[l3 + k + 1];
        type = 4; /* VIRTIO_NET_HDR_GSO_TCPV6 */
    } else {
        return 0;
    }
    l4 = l3 + iphl;
    uint32_t thl = (uint32_t)(f[l4 + 12] >> 4) * 4;
    if (thl < 20 || thl > plen || mtu <= iphl + thl)
        return 0;
    uint32_t mss = mtu - iphl - thl;
    if (plen - thl <= mss || mss > 0xFFFF)
        return 0;
    sum += 6 + plen;
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    f[l4 + 16] = (uint8_t)(sum >> 8);
    f[l4 + 17] = (uint8_t)sum;
    uint16_t fields[4] = {(uint16_t)(l4 + thl), (uint16_t)mss, (uint16_t)l4, 16};
    h[0] = 1; /* VIRTIO_NET_HDR_F_NEEDS_CSUM */
    h[1] = type;
    memcpy(h + 2, fields, sizeof(fields)); /* hdr_len, gso_size, csum_start, csum_offset */
    return 1;
}

/*
 * Write the frames of slots[0..n-1] (each at headroom, frame_len[slot] bytes) to a TAP. With
 * vnet > 0, a virtio-net header of vnet bytes is put in the headroom just in front of each
 * frame (over the VXLAN header, already parsed): zero, or with mtu > 0 and a TCP frame longer
 * than mtu + 14, a GSO header (gso_header above). A frame the TAP refuses is counted in
 * *errors and skipped; an error that means the device is gone (EBADFD, EIO, ENODEV, ENXIO,
 * EBADF) stops the loop and is returned as -errno. Otherwise returns frames written.
 */
int vx_tap_write(int fd, uint8_t *buf, uint32_t slot, uint32_t headroom, const uint32_t *slots,
                 uint32_t n, const uint32_t *frame_len, uint32_t vnet, uint32_t mtu,
                 uint32_t *errors)
{
    int written = 0;
    if (vnet > headroom || (vnet && vnet < 10))
        return -EINVAL;
    for (uint32_t j = 0; j < n; j++) {
        uint32_t i = slots[j];
        uint8_t *p = buf + (size_t)i * slot + headroom - vnet;
        uint32_t len = frame_len[i];
        if (vnet) {
            memset(p, 0, vnet);
            if (mtu && len > mtu + 14)
                gso_header(p + vnet, len, mtu, p);
        }
        ssize_t r = write(fd, p, len + vnet);
        if (r < 0) {
            int e = errno;
            if (e == EBADFD || e == EIO || e == ENODEV || e == ENXIO || e == EBADF)
                return -e;
            (*errors)++;
            continue;
        }
        written++;
    }
    return written;
}

/*
 * Receive up to min(cap - first, 64) datagrams with recvmmsg(2) into slots first.. (payload
 * at headroom - 8, room for max_payload bytes). Sets payload_len[i] and copies each source
 * address into addrs + i * 28 (room for a sockaddr_in6). A datagram larger than its slot is
 * marked with payload_len VX_TRUNCATED (never a real length) and counted in *truncated.
 * With gro non-NULL, gro[i] is the segment size of a UDP GRO receive (a socket with UDP_GRO
 * on: several datagrams of gro[i] bytes, the last possibly shorter, back to back in the slot),
 * else 0. Returns datagrams received (0 when none is waiting), or -errno.
 */
int vx_recv_batch(int fd, uint8_t *buf, uint32_t slot, uint32_t headroom, uint32_t first,
                  uint32_t cap, uint32_t max_payload, uint32_t *payload_len, uint8_t *addrs,
                  uint16_t *gro, uint32_t *truncated)
{
    struct mmsghdr msgs[VX_CHUNK];
    struct iovec iov[VX_CHUNK];
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctrl[VX_CHUNK];
    if (headroom < VX_HLEN || first >= cap)
        return 0;
    uint32_t k = cap - first < VX_CHUNK ? cap - first : VX_CHUNK;
    for (uint32_t j = 0; j < k; j++) {
        uint32_t i = first + j;
        iov[j].iov_base = buf + (size_t)i * slot + headroom - VX_HLEN;
        iov[j].iov_len = max_payload;
        memset(&msgs[j], 0, sizeof(msgs[j]));
        msgs[j].msg_hdr.msg_name = addrs + (size_t)i * 28;
        msgs[j].msg_hdr.msg_namelen = 28;
        msgs[j].msg_hdr.msg_iov = &iov[j];
        msgs[j].msg_hdr.msg_iovlen = 1;
        if (gro) {
            msgs[j].msg_hdr.msg_control = ctrl[j].buf;
            msgs[j].msg_hdr.msg_controllen = sizeof(ctrl[j].buf);
        }
    }
    int r = recvmmsg(fd, msgs, k, MSG_DONTWAIT, NULL);
    if (r < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
    for (int j = 0; j < r; j++) {
        uint32_t i = first + (uint32_t)j;
        if (gro) {
            gro[i] = 0;
            struct msghdr *h = &msgs[j].msg_hdr;
            for (struct cmsghdr *cm = CMSG_FIRSTHDR(h); cm != NULL; cm = CMSG_NXTHDR(h, cm))
                if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
                    int size;
                    memcpy(&size, CMSG_DATA(cm), sizeof(size));
                    gro[i] = size > 0 && size <= 0xFFFF ? (uint16_t)size : 0;
                }
        }
        /* a GRO receive whose size did not come through cannot be cut: drop it as truncated */
        if ((msgs[j].msg_hdr.msg_flags & MSG_TRUNC)
            || (gro && (msgs[j].msg_hdr.msg_flags & MSG_CTRUNC))) {
            payload_len[i] = 0xFFFFFFFFu; /* VX_TRUNCATED */
            (*truncated)++;
        } else {
            payload_len[i] = msgs[j].msg_len;
        }
    }
    return r;
}
