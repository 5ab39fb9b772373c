/*
 * UDP socket I/O in batches: recvmmsg (with UDP GRO's segment size), sendmmsg, UDP GSO sends
 * (UDP_SEGMENT), and the preparation of a TCP super-frame's chunks for one GSO send. Both the
 * C pumps and the Python transport (io/udp.py, through io/batchio.py) send through here; the
 * pure-Python twin is io/batchio.py. Also the busy poll over the pump's descriptors.
 *
 * The send sockets have IP_RECVERR on: an ICMP error that reaches one (port unreachable, ...)
 * waits in its error queue, where vxlanpy counts it, and also fails the next send on that
 * socket once with its errno, whichever remote that send was for. A send that fails while the
 * error queue holds a report is therefore tried again, once: the report is counted once (from
 * the queue) and the datagram is not lost.
 */
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#include "vx_internal.h"

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

/*
 * Receive up to vx_recv_want(first, cap) datagrams into slots first.. (payload at
 * headroom - 8, room for max_frame + 8 bytes), each source address into addrs. A datagram
 * larger than its slot is marked payload_len VX_LEN_TRUNCATED and counted in *truncated. With
 * gro, gso_size[i] is the segment size of a UDP GRO receive (several datagrams of gso_size
 * bytes, the last possibly shorter, back to back), else 0. tos[i] is the outer TOS / traffic
 * class when the socket reports it (IP_RECVTOS / IPV6_RECVTCLASS), else 0. Returns datagrams
 * received (0 when none is waiting), or -errno.
 */
int vx_udp_recv(int fd, vx_batch *b, uint32_t first, uint32_t cap, int gro, uint32_t *truncated)
{
    struct mmsghdr msgs[VX_RECV_CHUNK];
    struct iovec iov[VX_RECV_CHUNK];
    union {
        char buf[CMSG_SPACE(sizeof(int)) * 2];
        struct cmsghdr align;
    } ctrl[VX_RECV_CHUNK];
    uint32_t k = vx_recv_want(first, cap);
    if (b->headroom < VX_HLEN || k == 0 || cap > b->capacity)
        return 0;
    for (uint32_t j = 0; j < k; j++) {
        uint32_t i = first + j;
        iov[j].iov_base = vx_payload(b, i);
        iov[j].iov_len = b->max_frame + VX_HLEN;
        memset(&msgs[j], 0, sizeof(msgs[j]));
        msgs[j].msg_hdr.msg_name = b->addrs + (size_t)i * VX_ADDR_LEN;
        msgs[j].msg_hdr.msg_namelen = VX_ADDR_LEN;
        msgs[j].msg_hdr.msg_iov = &iov[j];
        msgs[j].msg_hdr.msg_iovlen = 1;
        msgs[j].msg_hdr.msg_control = ctrl[j].buf;
        msgs[j].msg_hdr.msg_controllen = sizeof(ctrl[j].buf);
    }
    int r = recvmmsg(fd, msgs, k, MSG_DONTWAIT, NULL);
    if (r < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
    for (int j = 0; j < r; j++) {
        uint32_t i = first + (uint32_t)j;
        struct msghdr *h = &msgs[j].msg_hdr;
        b->gso_size[i] = 0;
        b->offload[i] = 0;
        if (b->tos)
            b->tos[i] = 0;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(h); cm != NULL; cm = CMSG_NXTHDR(h, cm)) {
            if (gro && cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
                int size;
                memcpy(&size, CMSG_DATA(cm), sizeof(size));
                b->gso_size[i] = size > 0 && size <= 0xFFFF ? (uint16_t)size : 0;
            } else if (b->tos && cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_TOS) {
                b->tos[i] = *(const uint8_t *)CMSG_DATA(cm); /* one byte on receive */
            } else if (b->tos && cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_TCLASS) {
                int tclass;
                memcpy(&tclass, CMSG_DATA(cm), sizeof(tclass));
                b->tos[i] = (uint8_t)tclass;
            }
        }
        /* a GRO receive whose size did not come through cannot be cut: drop it as truncated */
        if ((h->msg_flags & MSG_TRUNC) || (gro && (h->msg_flags & MSG_CTRUNC))) {
            b->payload_len[i] = VX_LEN_TRUNCATED;
            (*truncated)++;
        } else {
            b->payload_len[i] = msgs[j].msg_len;
        }
    }
    return r;
}

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

/* Room for the control messages of one datagram: UDP_SEGMENT, TOS and TTL. */
#define VX_CTRL (CMSG_SPACE(sizeof(uint16_t)) + 2 * CMSG_SPACE(sizeof(int)))
typedef union {
    char buf[VX_CTRL];
    struct cmsghdr align;
} vx_ctrl;

static struct cmsghdr *put_int(struct msghdr *m, struct cmsghdr *cm, int level, int type, int v)
{
    cm = cm == NULL ? CMSG_FIRSTHDR(m) : CMSG_NXTHDR(m, cm);
    cm->cmsg_level = level;
    cm->cmsg_type = type;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &v, sizeof(v));
    return cm;
}

/* The control messages of datagram i (a GSO send of segments of seg bytes if seg): the TOS and
 * TTL it must leave with when they are not the socket's (o: what the socket has). */
static void set_ctrl(struct msghdr *m, vx_ctrl *c, const vx_batch *b, uint32_t i,
                     const vx_outer *o, int v6, uint32_t seg)
{
    memset(c, 0, sizeof(*c));
    m->msg_control = c->buf;
    m->msg_controllen = sizeof(c->buf); /* room for all: CMSG_NXTHDR needs it */
    struct cmsghdr *cm = NULL;
    size_t len = 0;
    if (seg) {
        cm = CMSG_FIRSTHDR(m);
        cm->cmsg_level = SOL_UDP;
        cm->cmsg_type = UDP_SEGMENT;
        cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t gso = (uint16_t)seg;
        memcpy(CMSG_DATA(cm), &gso, sizeof(gso));
        len += CMSG_SPACE(sizeof(uint16_t));
    }
    if (o != NULL && b->tos != NULL && b->tos[i] != o->tos) {
        cm = put_int(m, cm, v6 ? IPPROTO_IPV6 : IPPROTO_IP, v6 ? IPV6_TCLASS : IP_TOS, b->tos[i]);
        len += CMSG_SPACE(sizeof(int));
    }
    if (o != NULL && b->ttl != NULL && b->ttl[i] && b->ttl[i] != o->ttl) {
        cm = put_int(m, cm, v6 ? IPPROTO_IPV6 : IPPROTO_IP, v6 ? IPV6_HOPLIMIT : IP_TTL,
                     b->ttl[i]);
        len += CMSG_SPACE(sizeof(int));
    }
    m->msg_controllen = len;
    if (len == 0)
        m->msg_control = NULL;
}

static int is_v6(const uint8_t *addr)
{
    uint16_t fam;
    memcpy(&fam, addr, 2);
    return fam == AF_INET6;
}

/* sendmmsg of slots first..first+n-1 to addr: datagrams taken, or -errno if none. */
static int send_mmsg(int fd, const vx_batch *b, uint32_t first, uint32_t n, const uint8_t *addr,
                     uint32_t addrlen, const vx_outer *o)
{
    struct mmsghdr msgs[VX_RECV_CHUNK];
    struct iovec iov[VX_RECV_CHUNK];
    vx_ctrl ctrl[VX_RECV_CHUNK];
    int v6 = is_v6(addr);
    uint32_t done = 0;
    int retried = 0, e = 0;
    while (done < n) {
        uint32_t k = n - done < VX_RECV_CHUNK ? n - done : VX_RECV_CHUNK;
        for (uint32_t j = 0; j < k; j++) {
            uint32_t i = first + done + j;
            iov[j].iov_base = vx_payload(b, i);
            iov[j].iov_len = b->payload_len[i];
            memset(&msgs[j], 0, sizeof(msgs[j]));
            msgs[j].msg_hdr.msg_name = (void *)addr;
            msgs[j].msg_hdr.msg_namelen = addrlen;
            msgs[j].msg_hdr.msg_iov = &iov[j];
            msgs[j].msg_hdr.msg_iovlen = 1;
            set_ctrl(&msgs[j].msg_hdr, &ctrl[j], b, i, o, v6, 0);
        }
        int r = sendmmsg(fd, msgs, k, MSG_DONTWAIT);
        if (r < 0 && send_again(fd, &retried, &e))
            continue;
        if (r < 0)
            return done ? (int)done : -e;
        if (r == 0)
            break;
        retried = 0; /* fewer than k: the buffer is full or the next failed; the next round says */
        done += (uint32_t)r;
    }
    return (int)done;
}

/* One UDP GSO send of slots first..first+n-1 (every payload seg bytes but possibly the last,
 * n <= VX_GSO_MAX_SEGS, at most VX_GSO_MAX_BYTES): n, or -errno. */
static int send_gso(int fd, const vx_batch *b, uint32_t first, uint32_t n, uint32_t seg,
                    const uint8_t *addr, uint32_t addrlen, const vx_outer *o)
{
    struct iovec iov[VX_GSO_MAX_SEGS];
    vx_ctrl ctrl;
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    for (uint32_t k = 0; k < n; k++) {
        iov[k].iov_base = vx_payload(b, first + k);
        iov[k].iov_len = b->payload_len[first + k];
    }
    msg.msg_name = (void *)addr;
    msg.msg_namelen = addrlen;
    msg.msg_iov = iov;
    msg.msg_iovlen = n;
    set_ctrl(&msg, &ctrl, b, first, o, is_v6(addr), seg);
    int retried = 0, e = 0;
    for (;;) {
        if (sendmsg(fd, &msg, MSG_DONTWAIT) >= 0)
            return (int)n;
        if (!send_again(fd, &retried, &e))
            return -e;
    }
}

/* How many of slots first..first+n-1 form one GSO send: payloads of the first one's length
 * (a shorter one ends it) and its outer TOS and TTL, within the limits of UDP GSO. */
static uint32_t gso_run(const vx_batch *b, uint32_t first, uint32_t n)
{
    uint32_t seg = b->payload_len[first], k = 0, bytes = 0;
    while (k < n && k < VX_GSO_MAX_SEGS) {
        uint32_t at = first + k, len = b->payload_len[at];
        if (len > seg || bytes + len > VX_GSO_MAX_BYTES
            || (b->tos && (b->tos[at] != b->tos[first] || b->ttl[at] != b->ttl[first])))
            break;
        bytes += len;
        k++;
        if (len < seg)
            break;
    }
    return k;
}

/*
 * Send the encapsulated payloads of slots first..first+n-1 to addr from the socket fd. Runs of
 * equal-sized datagrams (and a shorter last one) leave as one UDP GSO send each, the kernel
 * building one skb per run; lone datagrams go by sendmmsg. If the route cannot take GSO
 * (EMSGSIZE: datagrams past the device MTU that must be fragmented; EINVAL, EIO, ENOPROTOOPT:
 * no UDP_SEGMENT), that run goes by sendmmsg, and for the latter *no_gso is set so later ones
 * do too. With o->zero_csum (no outer checksum: the kernel refuses UDP GSO then, EINVAL)
 * every run goes by sendmmsg. Returns datagrams the kernel took (the rest were refused: a full socket buffer), or
 * -errno if it took none.
 */
int vx_udp_send(int fd, const vx_batch *b, uint32_t first, uint32_t n, const uint8_t *addr,
                uint32_t addrlen, int32_t *no_gso, const vx_outer *o)
{
    uint32_t done = 0, lone = 0; /* lone: datagrams from first+done not sent yet, for mmsg */
    while (done + lone < n) {
        uint32_t at = first + done + lone;
        uint32_t k = 1;
        if (!__atomic_load_n(no_gso, __ATOMIC_RELAXED) && !(o != NULL && o->zero_csum))
            k = gso_run(b, at, n - done - lone);
        if (k < 2) {
            lone++;
            continue;
        }
        if (lone) {
            int r = send_mmsg(fd, b, first + done, lone, addr, addrlen, o);
            if (r < 0)
                return done ? (int)done : r;
            done += (uint32_t)r;
            if ((uint32_t)r < lone)
                return (int)done; /* the socket buffer is full */
            lone = 0;
        }
        int r = send_gso(fd, b, at, k, b->payload_len[at], addr, addrlen, o);
        if (r == -EMSGSIZE || r == -EINVAL || r == -EIO || r == -ENOPROTOOPT) {
            if (r != -EMSGSIZE)
                __atomic_store_n(no_gso, 1, __ATOMIC_RELAXED);
            lone = k; /* this run by sendmmsg */
            continue;
        }
        if (r < 0)
            return done ? (int)done : r;
        done += k;
    }
    if (lone) {
        int r = send_mmsg(fd, b, first + done, lone, addr, addrlen, o);
        if (r < 0)
            return done ? (int)done : r;
        done += (uint32_t)r;
    }
    return (int)done;
}

/*
 * The chunks of the TCP super-frame in slot i of b (gso_size[i] payload bytes each), ready to
 * send: cut into slots 0.. of out (vx_tso_cut), encapsulated for vni with source ports from
 * lo..hi, their outer fields set as o says, the super-frame's VXLAN-GBP policy (if its
 * header has one) copied. Returns how many, or 0 if it cannot be cut.
 */
uint32_t vx_super_prepare(const vx_batch *b, uint32_t i, uint32_t vni, vx_batch *out,
                          uint32_t lo, uint32_t hi, const vx_outer *o)
{
    uint32_t k = vx_tso_cut(b, i, b->gso_size[i], out, 0);
    for (uint32_t j = 0; j < k; j++)
        out->vni[j] = vni;
    vx_encap(out, 0, k, lo, hi);
    vx_outer_fields(out, 0, k, o);
    const uint8_t *h = vx_payload(b, i);
    if (h[0] & VX_GBP_G) /* the chunks carry the super-frame's group policy (flags, ID) */
        for (uint32_t j = 0; j < k; j++)
            memcpy(vx_payload(out, j), h, 4);
    return k;
}

/*
 * Busy polling: wait for one of fds[0..n) to become readable by polling without sleeping, for
 * at most usec microseconds (sched_yield between polls lets other runnable tasks on this CPU
 * go first). Returns 1 if one is readable, 0 on timeout, -errno on error. Sleeping in epoll
 * costs a wake-up (tens of microseconds on a VM) on the next packet; this trades CPU for it.
 */
int vx_spin(const int *fds, uint32_t n, uint32_t usec)
{
    struct pollfd p[16];
    if (n == 0 || n > 16)
        return -EINVAL;
    for (uint32_t k = 0; k < n; k++) {
        p[k].fd = fds[k];
        p[k].events = POLLIN;
    }
    uint64_t t0 = vx_now_us();
    for (;;) {
        int r = poll(p, n, 0);
        if (r != 0)
            return r > 0 ? 1 : -errno;
        if (vx_now_us() - t0 >= usec)
            return 0;
        sched_yield();
    }
}
