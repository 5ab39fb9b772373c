/*
 * Tunnel GSO: a TCP super-frame read from a segment's TAP handed to the kernel whole, as one
 * UDP-tunnel GSO packet (Linux 6.17+: VIRTIO_NET_HDR_GSO_UDP_TUNNEL in a 24-byte virtio-net
 * header on a TAP), instead of being cut into some 45 datagrams here. The packet is the whole
 * outer frame (Ethernet, IPv4, UDP, VXLAN) in front of the inner super-frame, written to a TAP
 * whose ingress the kernel redirects to the underlay device (tc mirred, set up by
 * io/tgso.py); the kernel, or the underlay's hardware, segments it, and across a veth a kernel
 * peer receives it as one packet. The outer addresses come from what the engine installed for
 * the remote (vx_dp_remote_link): C chooses no route.
 */
#include <sys/uio.h>
#include <unistd.h>

#include "vx_internal.h"

/* virtio-net header with the UDP tunnel fields (struct virtio_net_hdr_v1_hash_tunnel) */
#define TNL_HLEN 24
#define F_NEEDS_CSUM 1
#define F_UDP_TUNNEL_CSUM 8
#define GSO_UDP_TUNNEL_IPV4 0x20
#define OUTER_LEN (VX_ETH_HLEN + 20 + 8 + VX_HLEN) /* Ethernet, IPv4, UDP, VXLAN: 50 */

static void put_le16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/*
 * Send the super-frame in slot i of b (encapsulated for vni: its VXLAN header written, its
 * outer fields set) as one tunnel-GSO packet on the TAP fd, to the remote r (which has a link:
 * next-hop and source MACs, source IPv4); a slot whose ttl is 0 gets dp->link_ttl. Returns 0,
 * -EMSGSIZE if it is too large for one IPv4 packet, -EPROTO if it is no TCP super-frame with a
 * partial checksum (the caller cuts it then), or -errno of the write.
 */
int vx_tgso_send(vx_dp *dp, int fd, const vx_batch *b, uint32_t i, uint32_t vni,
                 const vx_remote *r)
{
    const uint8_t *f = vx_frame(b, i);
    uint32_t len = b->frame_len[i], gso = b->gso_type[i] & 0x7F;
    vx_l3l4 h;
    if (!(b->offload[i] & VX_OFF_NEEDS_CSUM) || (gso != VX_GSO_TCPV4 && gso != VX_GSO_TCPV6)
        || vx_parse(f, len, &h) == 0 || h.proto != 6 || !b->gso_size[i])
        return -EPROTO;
    uint32_t ulen = 8 + VX_HLEN + len;
    if (20 + ulen > 0xFFFF)
        return -EMSGSIZE;
    uint8_t hdr[TNL_HLEN + OUTER_LEN];
    memset(hdr, 0, sizeof(hdr));
    uint8_t *v = hdr, *eth = hdr + TNL_HLEN, *ip = eth + VX_ETH_HLEN, *udp = ip + 20;
    /* the virtio-net header: offsets count from the outer Ethernet header */
    int zero = dp->cfg.outer.zero_csum; /* noudpcsum: no outer checksum, GSO_UDP_TUNNEL */
    v[0] = (uint8_t)(zero ? F_NEEDS_CSUM : F_NEEDS_CSUM | F_UDP_TUNNEL_CSUM);
    v[1] = (uint8_t)(GSO_UDP_TUNNEL_IPV4 | gso | (b->gso_type[i] & 0x80));
    uint32_t tcp_hlen = (uint32_t)(f[h.l4 + 12] >> 4) * 4;
    put_le16(v + 2, OUTER_LEN + h.l4 + tcp_hlen);      /* hdr_len: every header */
    put_le16(v + 4, b->gso_size[i]);                   /* the inner MSS */
    put_le16(v + 6, OUTER_LEN + h.l4);                 /* csum_start: the inner TCP header */
    put_le16(v + 8, 16);                               /* csum_offset: TCP's checksum */
    put_le16(v + 20, VX_ETH_HLEN + 20);                /* outer_th: the outer UDP header */
    put_le16(v + 22, OUTER_LEN + h.l3);                /* inner_nh: the inner IP header */
    memcpy(eth, r->l2_dst, 6);
    memcpy(eth + 6, r->l2_src, 6);
    vx_put16(eth + 12, VX_ETH_P_IP);
    ip[0] = 0x45;
    ip[1] = b->tos[i];
    vx_put16(ip + 2, 20 + ulen);
    vx_put16(ip + 4, __atomic_fetch_add(&dp->ip_id, 1, __ATOMIC_RELAXED) & 0xFFFF);
    vx_put16(ip + 6, b->df[i] ? 0x4000 : 0);
    ip[8] = b->ttl[i] ? b->ttl[i] : (uint8_t)dp->link_ttl;
    ip[9] = 17;
    memcpy(ip + 12, r->l2_saddr, 4);
    memcpy(ip + 16, r->sa + 4, 4); /* sockaddr_in: the address after family and port */
    vx_put16(ip + 10, (uint16_t)~vx_fold16(vx_sum16(ip, 20)));
    vx_put16(udp, b->sport[i]);
    memcpy(udp + 2, r->sa + 2, 2); /* the remote's port, network order */
    vx_put16(udp + 4, ulen);
    /* the outer UDP checksum: the pseudo-header sum, completed per segment by the kernel */
    if (!zero)
        vx_put16(udp + 6, vx_fold16(vx_sum16(ip + 12, 8) + 17 + ulen));
    uint8_t *vx = udp + 8;
    memcpy(vx, vx_payload(b, i), 4); /* the flags word the encapsulation wrote */
    vx[4] = (uint8_t)(vni >> 16);
    vx[5] = (uint8_t)(vni >> 8);
    vx[6] = (uint8_t)vni;
    struct iovec iov[2] = {{hdr, sizeof(hdr)}, {(void *)f, len}};
    ssize_t w = writev(fd, iov, 2);
    if (w < 0)
        return -errno;
    return w == (ssize_t)(sizeof(hdr) + len) ? 0 : -EIO;
}
