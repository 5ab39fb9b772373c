/*
 * Receive coalescing (GRO): with UDP_GRO on the socket, the kernel hands over several UDP
 * datagrams of one flow back to back in one buffer, each seg bytes but the last. When they are
 * consecutive segments of one TCP stream, the receive pump passes the inner frames on as one
 * super-frame instead of one frame each. Part of the offload unit (offload.c); the Python twin
 * is _offload_py.gro_coalesce.
 */
#include "vx_internal.h"

/*
 * Coalesce the n = ceil(len / seg) VXLAN datagrams at p (each seg bytes, the last 1..seg) into
 * one, in place: the first datagram's headers, then every segment's TCP payload in order, with
 * the IP length, IPv4 header checksum, TCP flags (the last segment's) and a full TCP checksum
 * rewritten. Returns the new length, or 0 with p untouched when the datagrams are not
 * consecutive ACK segments of one TCP stream with valid checksums (see kernels.py). Everything
 * is validated before the first byte is written.
 */
uint32_t vx_gro_coalesce(uint8_t *p, uint32_t len, uint32_t seg)
{
    if (seg < VX_HLEN + VX_ETH_HLEN + 20 + 20 || len <= seg)
        return 0;
    vx_l3l4 h; /* of the first datagram's frame: the others must repeat its headers */
    if (!vx_parse(p + VX_HLEN, seg - VX_HLEN, &h) || h.tags || h.fragment || h.proto != 6)
        return 0;
    int v4 = h.ip == 4;
    uint32_t iphl = (uint32_t)(h.l4 - h.l3);
    if (v4 && iphl < 20)
        return 0;
    uint8_t *ip = p + VX_HLEN + h.l3;
    uint8_t *th = p + VX_HLEN + h.l4;
    uint64_t pseudo = vx_pseudo(p + VX_HLEN, &h); /* without the TCP length */
    if (VX_HLEN + h.l4 + 20u > seg)
        return 0;
    uint32_t thl = (uint32_t)(th[12] >> 4) * 4;
    uint32_t hlen = VX_HLEN + h.l4 + thl;
    if (thl < 20 || hlen >= seg)
        return 0;

    /* Every datagram but the last is seg bytes with headers of one size: their payloads all
     * have the first one's length, the MSS, and the last's is at most that. */
    uint32_t n = (len - 1) / seg + 1;
    uint32_t mss = seg - hlen;
    uint32_t last_len = len - (n - 1) * seg;
    if (last_len <= hlen)
        return 0;
    uint64_t total = (uint64_t)(n - 1) * mss + (last_len - hlen);
    if ((v4 ? iphl : 0) + thl + total > 0xFFFF)
        return 0;

    uint32_t seq = vx_get32(th + 4);
    uint64_t paysum = 0; /* vx_sum16 of the merged payload, from the per-segment sums */
    uint32_t off = 0;    /* offset of segment i's payload in the merged payload */
    uint8_t last_flags = 0;
    uint32_t hdrs = VX_HLEN + VX_ETH_HLEN;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *d = p + (size_t)i * seg;
        const uint8_t *dip = d + VX_HLEN + h.l3;
        const uint8_t *dth = d + VX_HLEN + h.l4;
        uint32_t plen = (i + 1 < n ? seg : last_len) - hlen;
        uint32_t l4len = thl + plen;
        if (memcmp(d, p, hdrs))
            return 0;
        if (v4) {
            /* all but total length, id and checksum; the checksum must verify */
            if (memcmp(dip, ip, 2) || memcmp(dip + 6, ip + 6, 4)
                || memcmp(dip + 12, ip + 12, iphl - 12) || vx_get16(dip + 2) != iphl + l4len
                || vx_fold16(vx_sum16(dip, iphl)) != 0xFFFF)
                return 0;
        } else if (memcmp(dip, ip, 4) || memcmp(dip + 6, ip + 6, 34)
                   || vx_get16(dip + 4) != l4len) {
            return 0;
        }
        /* all but seq, flags and checksum */
        if (memcmp(dth, th, 4) || memcmp(dth + 8, th + 8, 5) || memcmp(dth + 14, th + 14, 2)
            || memcmp(dth + 18, th + 18, thl - 18))
            return 0;
        last_flags = dth[13];
        if (last_flags != VX_TCP_ACK && (i + 1 < n || last_flags != (VX_TCP_ACK | VX_TCP_PSH)))
            return 0;
        if (vx_get32(dth + 4) != seq)
            return 0;
        uint32_t ps = vx_csum16(dth + thl, plen);
        if (vx_fold16(pseudo + l4len + vx_sum16(dth, thl) + ps) != 0xFFFF)
            return 0;
        /* The TCP header length is a multiple of 4, so a payload at an odd merged offset has
         * its bytes in the other halves of the words: its sum is byte-swapped. */
        paysum += (off & 1) ? ((ps & 0xFFu) << 8) | (ps >> 8) : ps;
        off += plen;
        seq += plen; /* mod 2^32 */
    }

    /* Valid: move the payloads behind the first one (each moves towards the front, in order,
     * so no source is overwritten before it is read), then fix the headers. */
    uint8_t *out = th + thl + mss;
    for (uint32_t i = 1; i < n; i++) {
        uint32_t plen = (i + 1 < n ? seg : last_len) - hlen;
        memmove(out, p + (size_t)i * seg + hlen, plen);
        out += plen;
    }
    uint32_t l4len = thl + (uint32_t)total;
    if (v4) {
        vx_put16(ip + 2, iphl + l4len);
        vx_put16(ip + 10, 0);
        vx_put16(ip + 10, (uint16_t)~vx_fold16(vx_sum16(ip, iphl)));
    } else {
        vx_put16(ip + 4, l4len);
    }
    th[13] = last_flags;
    vx_put16(th + 16, 0);
    vx_put16(th + 16, (uint16_t)~vx_fold16(pseudo + l4len + vx_sum16(th, thl) + paysum));
    return hlen + (uint32_t)total;
}
