/*
 * The VXLAN header (RFC 7348) and the inner-flow hash: encapsulation and decapsulation of a
 * batch in place, and the hash that picks each flow's outer UDP source port. The pure-Python
 * twin is _codec_py.py (and wire.flow_hash); the tests hold the two to byte equality.
 */
#include "vx_internal.h"

/*
 * CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320, as zlib.crc32), four bits a step: the
 * table is 16 entries, one cache line, where the byte-wise 256-entry table is sixteen. The
 * hash runs once per frame, and after an idle spell the larger table's lines were cold: about
 * 4 µs per echo of a ping (cpu-clock samples, docs/performance.md). A constant: cffi releases
 * the GIL around calls, so a table filled lazily could be read half-built by a second thread.
 */
static const uint32_t crc_nibble[16] __attribute__((aligned(64))) = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
    0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
    0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu,
};

static uint32_t crc32_buf(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c = crc_nibble[(c ^ p[i]) & 0xF] ^ (c >> 4);
        c = crc_nibble[(c ^ (p[i] >> 4)) & 0xF] ^ (c >> 4);
    }
    return c ^ 0xFFFFFFFFu;
}

static int l4_has_ports(uint8_t proto)
{
    return proto == 6 || proto == 17 || proto == 132 || proto == 136;
}

/* The flow key of wire.flow_key into key[] (at least 1 + 36 + 4 bytes); returns its length. */
static size_t flow_key(const uint8_t *f, uint32_t n, uint8_t *key)
{
    vx_l3l4 h;
    size_t k = 0;
    if (n < VX_ETH_HLEN) {
        key[k++] = 0;
        memcpy(key + k, f, n);
        return k + n;
    }
    vx_parse(f, n, &h);
    if (h.ip == 4) {
        key[k++] = 4;
        key[k++] = h.proto;
        memcpy(key + k, f + h.l3 + 12, 8);
        k += 8;
        if (!h.fragment && l4_has_ports(h.proto) && h.l4 >= h.l3 + 20 && n >= h.l4 + 4u) {
            memcpy(key + k, f + h.l4, 4);
            k += 4;
        }
        return k;
    }
    if (h.ip == 6) {
        key[k++] = 6;
        key[k++] = h.proto;
        memcpy(key + k, f + h.l3 + 8, 32);
        k += 32;
        if (l4_has_ports(h.proto) && n >= h.l4 + 4u) {
            memcpy(key + k, f + h.l4, 4);
            k += 4;
        }
        return k;
    }
    key[k++] = 0;
    memcpy(key + k, f, 12);
    k += 12;
    key[k++] = (uint8_t)(h.ethertype >> 8);
    key[k++] = (uint8_t)(h.ethertype & 0xFF);
    return k;
}

uint32_t vx_flow_hash(const uint8_t *frame, uint32_t len)
{
    uint8_t key[64];
    return vx_fmix32(crc32_buf(key, flow_key(frame, len, key)));
}

static uint16_t port_from_hash(uint32_t h, uint32_t lo, uint32_t hi)
{
    return (uint16_t)(lo + (((uint64_t)h * (uint64_t)(hi - lo + 1)) >> 32));
}

/*
 * Encapsulate slots first..first+n-1 in place: the VXLAN header for vni[i] in front of each
 * frame, payload_len[i] = frame_len[i] + 8, sport[i] from the inner-flow hash in lo..hi.
 */
void vx_encap(vx_batch *b, uint32_t first, uint32_t n, uint32_t lo, uint32_t hi)
{
    for (uint32_t i = first; i < first + n; i++) {
        uint8_t *h = vx_payload(b, i);
        uint32_t v = b->vni[i] & 0xFFFFFFu;
        if (b->frame_len[i] > b->slot - b->headroom) { /* corrupt length: never read past */
            b->payload_len[i] = 0;
            b->sport[i] = (uint16_t)lo;
            continue;
        }
        h[0] = VX_FLAG_I;
        h[1] = h[2] = h[3] = 0;
        h[4] = (uint8_t)(v >> 16);
        h[5] = (uint8_t)(v >> 8);
        h[6] = (uint8_t)v;
        h[7] = 0;
        b->payload_len[i] = b->frame_len[i] + VX_HLEN;
        b->sport[i] = port_from_hash(vx_flow_hash(h + VX_HLEN, b->frame_len[i]), lo, hi);
    }
}

/* A reserved header bit set (strict: a vx_strict mode other than off). */
static int reserved_set(const uint8_t *h, int strict)
{
    if (strict == VX_STRICT_GBP)
        return (h[0] & ~(VX_GBP_G | VX_FLAG_I)) || (h[1] & ~(VX_GBP_D | VX_GBP_A)) || h[7];
    return h[0] != VX_FLAG_I || h[1] || h[2] || h[3] || h[7];
}

/*
 * Check the received payloads in slots first..first+n-1 (payload_len[i] bytes at headroom - 8):
 * status[i] (a vx_status), vni[i] and frame_len[i] (0 unless VX_ST_OK); strict: a vx_strict.
 */
void vx_decap(vx_batch *b, uint32_t first, uint32_t n, int strict)
{
    for (uint32_t i = first; i < first + n; i++) {
        const uint8_t *h = vx_payload(b, i);
        uint32_t len = b->payload_len[i];
        int32_t st = VX_ST_OK;
        if (len > b->slot - b->headroom + VX_HLEN) /* corrupt length: unreadable */
            len = 0;
        b->vni[i] = 0;
        b->frame_len[i] = 0;
        if (len < VX_HLEN)
            st = VX_ST_TOO_SHORT;
        else if (!(h[0] & VX_FLAG_I))
            st = VX_ST_NO_I_FLAG;
        else if (strict && reserved_set(h, strict))
            st = VX_ST_RESERVED;
        else if (len - VX_HLEN < VX_ETH_HLEN)
            st = VX_ST_INNER_TOO_SHORT;
        if (st == VX_ST_OK) {
            b->vni[i] = ((uint32_t)h[4] << 16) | ((uint32_t)h[5] << 8) | h[6];
            b->frame_len[i] = len - VX_HLEN;
        }
        b->status[i] = st;
    }
}

/* --- the outer IP header: TOS (ECN), TTL, DF from the inner packet ---------------------- */

/* The inner packet's TOS / traffic class (0 if it is not IP), TTL / hop limit (0 if not IP) and
 * DF: the IPv4 DF bit; always for IPv6, which routers never fragment (as the kernel's vxlan
 * decides for `df inherit`). */
static void inner_ip(const uint8_t *f, uint32_t len, uint8_t *tos, uint8_t *ttl, uint8_t *df)
{
    vx_l3l4 h;
    *tos = *ttl = *df = 0;
    int v = vx_parse(f, len, &h);
    const uint8_t *ip = f + h.l3;
    if (v == 4) {
        *tos = ip[1];
        *ttl = ip[8];
        *df = (ip[6] & 0x40) != 0;
    } else if (v == 6) {
        *tos = (uint8_t)(((ip[0] & 0x0F) << 4) | (ip[1] >> 4));
        *ttl = ip[7];
        *df = 1;
    }
}

/*
 * tos[i], ttl[i] and df[i] of slots first..first+n-1 (their frames): the outer header's fields
 * as the kernel's vxlan sets them (INET_ECN_encapsulate: the inner ECN field is copied, CE
 * sent as ECT(0); `tos inherit`: the whole inner TOS; `ttl inherit`; `df inherit`).
 */
void vx_outer_fields(vx_batch *b, uint32_t first, uint32_t n, const vx_outer *o)
{
    for (uint32_t i = first; i < first + n; i++) {
        uint8_t tos, ttl, df;
        uint32_t len = b->frame_len[i];
        if (len > b->slot - b->headroom)
            len = 0;
        inner_ip(vx_frame(b, i), len, &tos, &ttl, &df);
        uint8_t ecn = tos & 3;
        uint8_t base = o->tos_inherit ? tos : o->tos;
        b->tos[i] = (uint8_t)((base & ~3u) | (ecn == 3 ? 2 : ecn));
        b->ttl[i] = o->ttl_inherit && ttl ? ttl : o->ttl;
        b->df[i] = o->df_inherit ? df : o->df;
    }
}

/*
 * RFC 6040 decapsulation of the ECN field, as the kernel's INET_ECN_decapsulate: for each
 * decapsulated slot (status OK), with the outer TOS in tos[i]: an outer CE marks an ECN-capable
 * inner packet CE, an outer ECT(1) turns an inner ECT(0) into ECT(1), and an outer CE over a
 * not-ECT inner packet is an error (status VX_ST_ECN: dropped). The inner IPv4 header
 * checksum is updated incrementally (RFC 1624): a wrong one stays wrong. Returns how many
 * packets it rewrote.
 */
uint32_t vx_ecn_decap(vx_batch *b, uint32_t first, uint32_t n)
{
    uint32_t rewritten = 0;
    for (uint32_t i = first; i < first + n; i++) {
        uint8_t outer = b->tos[i] & 3;
        if (b->status[i] != VX_ST_OK || outer == 0)
            continue;
        uint8_t *f = vx_frame(b, i);
        vx_l3l4 h;
        int v = vx_parse(f, b->frame_len[i], &h);
        if (v == 0)
            continue; /* not IP: nothing to carry the mark */
        uint8_t *ip = f + h.l3;
        uint8_t inner = v == 4 ? ip[1] & 3 : (ip[1] >> 4) & 3;
        uint8_t want = inner;
        if (inner == 0) {
            if (outer == 3)
                b->status[i] = VX_ST_ECN;
            continue;
        }
        if (outer == 3)
            want = 3;
        else if (outer == 1 && inner == 2)
            want = 1;
        if (want == inner)
            continue;
        if (v == 4) {
            uint32_t old = vx_get16(ip);
            ip[1] = (uint8_t)((ip[1] & ~3u) | want);
            uint32_t sum = (~vx_get16(ip + 10) & 0xFFFFu) + (~old & 0xFFFFu) + vx_get16(ip);
            vx_put16(ip + 10, (uint16_t)~vx_fold16(sum));
        } else {
            ip[1] = (uint8_t)((ip[1] & 0xCF) | (want << 4));
        }
        rewritten++;
    }
    return rewritten;
}
