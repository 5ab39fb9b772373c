/*
 * The offload unit: what a TAP with virtio-net offloads (checksum, TSO) and a UDP socket with
 * GSO/GRO ask of a dataplane, in one place with one header parse. Here: the parse, checksums
 * (the word-speed sum, completing partial checksums, verifying), and the virtio-net GSO header
 * for writing a super-frame to a TAP; tso.c cuts super-frames into chunks and gro.c merges a
 * UDP GRO receive. The pure-Python twin of all three is _offload_py.py.
 */
#include "vx_internal.h"

/*
 * Where the network headers of an Ethernet frame are (VLAN tags skipped). Returns the IP
 * version (4 or 6) when the fixed IP header is there, else 0; *h is always filled.
 */
int vx_parse(const uint8_t *f, uint32_t len, vx_l3l4 *h)
{
    memset(h, 0, sizeof(*h));
    if (len < VX_ETH_HLEN)
        return 0;
    uint32_t off = 12, et = vx_get16(f + 12);
    while ((et == VX_ETH_P_8021Q || et == VX_ETH_P_8021AD) && len >= off + 6) {
        off += 4;
        et = vx_get16(f + off);
        h->tags++;
    }
    uint32_t l3 = off + 2;
    h->ethertype = (uint16_t)et;
    h->l3 = (uint16_t)l3;
    if (et == VX_ETH_P_IP && len >= l3 + 20 && (f[l3] >> 4) == 4) {
        uint32_t ihl = (uint32_t)(f[l3] & 0x0F) * 4, tot = vx_get16(f + l3 + 2);
        h->ip = 4;
        h->proto = f[l3 + 9];
        h->fragment = (vx_get16(f + l3 + 6) & 0x3FFF) != 0; /* MF set, or an offset */
        h->l4 = (uint16_t)(l3 + ihl);
        h->l4_len = (uint16_t)(tot >= ihl ? tot - ihl : 0);
        h->ok = ihl >= 20 && tot >= ihl && tot <= len - l3;
    } else if (et == VX_ETH_P_IPV6 && len >= l3 + 40 && (f[l3] >> 4) == 6) {
        uint32_t plen = vx_get16(f + l3 + 4);
        h->ip = 6;
        h->proto = f[l3 + 6];
        h->l4 = (uint16_t)(l3 + 40);
        h->l4_len = (uint16_t)plen;
        h->ok = plen <= len - l3 - 40;
    }
    return h->ip;
}

/*
 * One's-complement sum of p[0..n) as native-order 16-bit words, folded and returned in the
 * big-endian convention of vx_sum16 (byte order only permutes the bytes of a one's-complement
 * sum). Four independent 64-bit accumulators with end-around carry (2^64 = 1 mod 0xFFFF, and
 * a nonzero sum never turns to 0): 32 bytes per iteration without vector code, about twice as
 * fast at -O2 as one 32-bit-word accumulator.
 */
uint32_t vx_csum16(const uint8_t *p, size_t n)
{
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, w0, w1, w2, w3;
    while (n >= 32) {
        memcpy(&w0, p, 8);
        memcpy(&w1, p + 8, 8);
        memcpy(&w2, p + 16, 8);
        memcpy(&w3, p + 24, 8);
        s0 += w0;
        s0 += s0 < w0;
        s1 += w1;
        s1 += s1 < w1;
        s2 += w2;
        s2 += s2 < w2;
        s3 += w3;
        s3 += s3 < w3;
        p += 32;
        n -= 32;
    }
    uint64_t s = (s0 >> 32) + (s0 & 0xFFFFFFFFu) + (s1 >> 32) + (s1 & 0xFFFFFFFFu)
                 + (s2 >> 32) + (s2 & 0xFFFFFFFFu) + (s3 >> 32) + (s3 & 0xFFFFFFFFu);
    uint16_t w16;
    for (; n >= 4; n -= 4, p += 4) {
        uint32_t w;
        memcpy(&w, p, 4);
        s += w;
    }
    if (n >= 2) {
        memcpy(&w16, p, 2);
        s += w16;
        p += 2;
        n -= 2;
    }
    if (n) {
        uint8_t t[2] = {p[0], 0};
        memcpy(&w16, t, 2);
        s += w16;
    }
    w16 = vx_fold16(s);
    uint8_t b[2];
    memcpy(b, &w16, 2);
    return vx_get16(b);
}

/* What complete_one found. */
enum { CSUM_NONE = 0, CSUM_VALID = 1, CSUM_COMPLETED = 2 };

/*
 * The TCP/UDP checksum of one untagged frame f[0..len): CSUM_VALID if it verifies,
 * CSUM_COMPLETED if it was in the partial state (the field holds exactly the folded
 * pseudo-header sum, as a checksum-offloading sender leaves it) and has been completed in
 * place, CSUM_NONE otherwise (wrong, absent, or not TCP/UDP: left alone).
 */
static int complete_one(uint8_t *f, uint32_t len)
{
    vx_l3l4 h;
    if (!vx_parse(f, len, &h) || h.tags || !h.ok || h.fragment)
        return CSUM_NONE;
    uint32_t hlen, coff;
    if (h.proto == 6) {
        hlen = 20;
        coff = 16;
    } else if (h.proto == 17) {
        hlen = 8;
        coff = 6;
    } else {
        return CSUM_NONE;
    }
    if (h.l4_len < hlen)
        return CSUM_NONE;
    uint8_t *l4 = f + h.l4;
    uint64_t pseudo = vx_pseudo(f, &h) + h.l4_len;
    uint16_t field = (uint16_t)vx_get16(l4 + coff);
    if (h.ip == 4 && h.proto == 17 && field == 0) /* UDP over IPv4 without a checksum */
        return CSUM_NONE;
    uint64_t total = pseudo + vx_csum16(l4, h.l4_len);
    if (vx_fold16(total) == 0xFFFF)
        return CSUM_VALID;
    if (field != vx_fold16(pseudo)) /* not the partial state: a wrong checksum, not ours */
        return CSUM_NONE;
    uint16_t c = (uint16_t)~vx_fold16(total + (uint16_t)~field); /* ~field: -field */
    if (h.proto == 17 && c == 0)
        c = 0xFFFF;
    vx_put16(l4 + coff, c);
    return CSUM_COMPLETED;
}

/*
 * Complete the partial TCP/UDP checksums of the frames in slots first..first+n-1 (frames the
 * batch marks VX_OFF_COALESCED were verified when merged and are skipped). Frames whose
 * checksum verifies afterwards are marked VX_OFF_CSUM_OK; correct and otherwise wrong
 * checksums are left alone. Returns how many were rewritten.
 */
uint32_t vx_complete_checksums(vx_batch *b, uint32_t first, uint32_t n)
{
    uint32_t fixed = 0;
    for (uint32_t i = first; i < first + n; i++) {
        uint32_t len = b->frame_len[i];
        if (b->offload[i] & VX_OFF_COALESCED)
            continue;
        b->offload[i] &= (uint8_t)~VX_OFF_CSUM_OK;
        if (len < VX_ETH_HLEN || len > b->slot - b->headroom) /* short, or corrupt length */
            continue;
        int r = complete_one(vx_frame(b, i), len);
        if (r != CSUM_NONE)
            b->offload[i] |= VX_OFF_CSUM_OK;
        fixed += r == CSUM_COMPLETED;
    }
    return fixed;
}

/*
 * A GSO virtio-net header at hdr (VX_VNET_HLEN bytes) for the TCP frame f[0..len) that is
 * larger than the device's mtu + 14 (a super-frame a kernel peer sent as one tunnel-GSO packet,
 * or one that GRO coalesced): NEEDS_CSUM, TCPV4/TCPV6, gso_size = the MSS that fits mtu, and
 * the pseudo-header sum put in the TCP checksum field, as CHECKSUM_PARTIAL wants; the kernel
 * then segments it wherever it must (a bridge port, a forwarding route). Only for a frame whose
 * checksum the caller has verified: the kernel will compute a fresh one. Returns 1, or 0 (hdr
 * and f untouched) for anything else: not untagged IPv4/IPv6 + TCP, a fragment, lengths that
 * do not add up, or a payload that fits one segment anyway.
 */
int vx_vnet_gso(uint8_t *f, uint32_t len, uint32_t mtu, uint8_t *hdr)
{
    vx_l3l4 h;
    if (len < VX_ETH_HLEN + 40 || !vx_parse(f, len, &h) || h.tags || !h.ok || h.fragment
        || h.proto != 6 || h.l4_len < 20)
        return 0;
    uint32_t iphl = (uint32_t)(h.l4 - h.l3), thl = (uint32_t)(f[h.l4 + 12] >> 4) * 4;
    if (thl < 20 || thl > h.l4_len || mtu <= iphl + thl)
        return 0;
    uint32_t mss = mtu - iphl - thl;
    if (h.l4_len - thl <= mss || mss > 0xFFFF)
        return 0;
    vx_put16(f + h.l4 + 16, vx_fold16(vx_pseudo(f, &h) + h.l4_len));
    uint16_t fields[4] = {(uint16_t)(h.l4 + thl), (uint16_t)mss, h.l4, 16};
    hdr[0] = VX_VNET_F_NEEDS_CSUM;
    hdr[1] = h.ip == 4 ? VX_GSO_TCPV4 : VX_GSO_TCPV6;
    memcpy(hdr + 2, fields, sizeof(fields)); /* hdr_len, gso_size, csum_start, csum_offset */
    return 1;
}
