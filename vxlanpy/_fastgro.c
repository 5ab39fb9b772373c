/*
 * vxlanpy receive path: coalescing a UDP GRO receive into one VXLAN datagram that carries one
 * inner TCP super-frame.
 *
 * With UDP_GRO on the socket, the kernel hands over several UDP datagrams of one flow back to
 * back in one buffer, each seg bytes but the last. When they are consecutive segments of one TCP
 * stream, the receive pump can pass the inner frames on as a single super-frame instead of one
 * frame each. The pure-Python twin is gro_coalesce in _fastpath_py.py; the tests hold the two to
 * byte equality. See fastpath.py for the contract.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_fastpath.h"

#define VX_HLEN 8
#define VX_ETH_HLEN 14
#define VX_TCP_PSH 0x08
#define VX_TCP_ACK 0x10

static uint32_t get16(const uint8_t *p)
{
    return ((uint32_t)p[0] << 8) | p[1];
}

static uint32_t get32(const uint8_t *p)
{
    return (get16(p) << 16) | get16(p + 2);
}

static void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* Sum of the big-endian 16-bit words of p[0..n) (an odd last byte is the high half of a word). */
static uint64_t sum16(const uint8_t *p, size_t n)
{
    uint64_t s = 0;
    size_t i;
    for (i = 0; i + 1 < n; i += 2)
        s += ((uint32_t)p[i] << 8) | p[i + 1];
    if (n & 1)
        s += (uint32_t)p[n - 1] << 8;
    return s;
}

/* One's-complement fold to 16 bits. A nonzero sum folds to 1..0xFFFF, never to 0. */
static uint16_t fold16(uint64_t s)
{
    while (s >> 16)
        s = (s & 0xFFFFu) + (s >> 16);
    return (uint16_t)s;
}

/*
 * Coalesce the n = ceil(len / seg) VXLAN datagrams at p (each seg bytes, the last 1..seg) into
 * one, in place: the first datagram's headers, then every segment's TCP payload in order, with
 * the IP length, IPv4 header checksum, TCP flags (the last segment's) and a full TCP checksum
 * rewritten. Returns the new length, or 0 with p untouched when the datagrams are not
 * consecutive ACK segments of one TCP stream with valid checksums (see fastpath.py). Everything
 * is validated before the first byte is written.
 */
uint32_t vx_gro_coalesce(uint8_t *p, uint32_t len, uint32_t seg)
{
    if (seg < VX_HLEN + VX_ETH_HLEN + 20 + 20 || len <= seg)
        return 0;
    uint8_t *ip = p + VX_HLEN + VX_ETH_HLEN;
    uint32_t et = get16(p + VX_HLEN + 12);
    uint32_t iphl;
    uint64_t pseudo; /* pseudo-header sum without the TCP length */
    int v4;

    /* Checked on the first datagram only: the others must repeat these bytes. */
    if (et == 0x0800) {
        iphl = (uint32_t)(ip[0] & 0x0F) * 4;
        if ((ip[0] >> 4) != 4 || iphl < 20 || ip[9] != 6)
            return 0;
        if (get16(ip + 6) & 0x3FFF) /* MF set or offset: a fragment */
            return 0;
        pseudo = sum16(ip + 12, 8) + 6;
        v4 = 1;
    } else if (et == 0x86DD) {
        if ((ip[0] >> 4) != 6 || ip[6] != 6) /* extension headers are not coalesced */
            return 0;
        iphl = 40;
        pseudo = sum16(ip + 8, 32) + 6;
        v4 = 0;
    } else {
        return 0;
    }
    if (VX_HLEN + VX_ETH_HLEN + iphl + 20 > seg)
        return 0;
    uint8_t *th = ip + iphl;
    uint32_t thl = (uint32_t)(th[12] >> 4) * 4;
    uint32_t hlen = VX_HLEN + VX_ETH_HLEN + iphl + thl;
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

    uint32_t seq = get32(th + 4);
    uint64_t paysum = 0; /* sum16 of the merged payload, from the per-segment sums */
    uint32_t off = 0;    /* offset of segment i's payload in the merged payload */
    uint8_t last_flags = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *d = p + (size_t)i * seg;
        const uint8_t *dip = d + VX_HLEN + VX_ETH_HLEN;
        const uint8_t *dth = dip + iphl;
        uint32_t plen = (i + 1 < n ? seg : last_len) - hlen;
        uint32_t l4len = thl + plen;
        if (memcmp(d, p, VX_HLEN + VX_ETH_HLEN))
            return 0;
        if (v4) {
            /* all but total length, id and checksum; the checksum must verify */
            if (memcmp(dip, ip, 2) || memcmp(dip + 6, ip + 6, 4)
                || memcmp(dip + 12, ip + 12, iphl - 12) || get16(dip + 2) != iphl + l4len
                || fold16(sum16(dip, iphl)) != 0xFFFF)
                return 0;
        } else if (memcmp(dip, ip, 4) || memcmp(dip + 6, ip + 6, 34) || get16(dip + 4) != l4len) {
            return 0;
        }
        /* all but seq, flags and checksum */
        if (memcmp(dth, th, 4) || memcmp(dth + 8, th + 8, 5) || memcmp(dth + 14, th + 14, 2)
            || memcmp(dth + 18, th + 18, thl - 18))
            return 0;
        last_flags = dth[13];
        if (last_flags != VX_TCP_ACK && (i + 1 < n || last_flags != (VX_TCP_ACK | VX_TCP_PSH)))
            return 0;
        if (get32(dth + 4) != seq)
            return 0;
        uint32_t ps = vx_csum16(dth + thl, plen);
        if (fold16(pseudo + l4len + sum16(dth, thl) + ps) != 0xFFFF)
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
        put16(ip + 2, iphl + l4len);
        put16(ip + 10, 0);
        put16(ip + 10, (uint16_t)~fold16(sum16(ip, iphl)));
    } else {
        put16(ip + 4, l4len);
    }
    th[13] = last_flags;
    put16(th + 16, 0);
    put16(th + 16, (uint16_t)~fold16(pseudo + l4len + sum16(th, thl) + paysum));
    return hlen + (uint32_t)total;
}
