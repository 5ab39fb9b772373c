/*
 * The VXLAN header (RFC 7348) and the inner-flow hash: encapsulation and decapsulation of a
 * batch in place, and the hash that picks each flow's outer UDP source port. The pure-Python
 * twin is _codec_py.py (and wire.flow_hash); the tests hold the two to byte equality.
 */
#include "vx_internal.h"

/*
 * CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320, as zlib.crc32). The table is a constant:
 * cffi releases the GIL around calls, so a table filled lazily on first use could be read
 * half-built by a second thread.
 */
static const uint32_t crc_table[256] = {
    0x00000000u, 0x77073096u, 0xEE0E612Cu, 0x990951BAu, 0x076DC419u, 0x706AF48Fu,
    0xE963A535u, 0x9E6495A3u, 0x0EDB8832u, 0x79DCB8A4u, 0xE0D5E91Eu, 0x97D2D988u,
    0x09B64C2Bu, 0x7EB17CBDu, 0xE7B82D07u, 0x90BF1D91u, 0x1DB71064u, 0x6AB020F2u,
    0xF3B97148u, 0x84BE41DEu, 0x1ADAD47Du, 0x6DDDE4EBu, 0xF4D4B551u, 0x83D385C7u,
    0x136C9856u, 0x646BA8C0u, 0xFD62F97Au, 0x8A65C9ECu, 0x14015C4Fu, 0x63066CD9u,
    0xFA0F3D63u, 0x8D080DF5u, 0x3B6E20C8u, 0x4C69105Eu, 0xD56041E4u, 0xA2677172u,
    0x3C03E4D1u, 0x4B04D447u, 0xD20D85FDu, 0xA50AB56Bu, 0x35B5A8FAu, 0x42B2986Cu,
    0xDBBBC9D6u, 0xACBCF940u, 0x32D86CE3u, 0x45DF5C75u, 0xDCD60DCFu, 0xABD13D59u,
    0x26D930ACu, 0x51DE003Au, 0xC8D75180u, 0xBFD06116u, 0x21B4F4B5u, 0x56B3C423u,
    0xCFBA9599u, 0xB8BDA50Fu, 0x2802B89Eu, 0x5F058808u, 0xC60CD9B2u, 0xB10BE924u,
    0x2F6F7C87u, 0x58684C11u, 0xC1611DABu, 0xB6662D3Du, 0x76DC4190u, 0x01DB7106u,
    0x98D220BCu, 0xEFD5102Au, 0x71B18589u, 0x06B6B51Fu, 0x9FBFE4A5u, 0xE8B8D433u,
    0x7807C9A2u, 0x0F00F934u, 0x9609A88Eu, 0xE10E9818u, 0x7F6A0DBBu, 0x086D3D2Du,
    0x91646C97u, 0xE6635C01u, 0x6B6B51F4u, 0x1C6C6162u, 0x856530D8u, 0xF262004Eu,
    0x6C0695EDu, 0x1B01A57Bu, 0x8208F4C1u, 0xF50FC457u, 0x65B0D9C6u, 0x12B7E950u,
    0x8BBEB8EAu, 0xFCB9887Cu, 0x62DD1DDFu, 0x15DA2D49u, 0x8CD37CF3u, 0xFBD44C65u,
    0x4DB26158u, 0x3AB551CEu, 0xA3BC0074u, 0xD4BB30E2u, 0x4ADFA541u, 0x3DD895D7u,
    0xA4D1C46Du, 0xD3D6F4FBu, 0x4369E96Au, 0x346ED9FCu, 0xAD678846u, 0xDA60B8D0u,
    0x44042D73u, 0x33031DE5u, 0xAA0A4C5Fu, 0xDD0D7CC9u, 0x5005713Cu, 0x270241AAu,
    0xBE0B1010u, 0xC90C2086u, 0x5768B525u, 0x206F85B3u, 0xB966D409u, 0xCE61E49Fu,
    0x5EDEF90Eu, 0x29D9C998u, 0xB0D09822u, 0xC7D7A8B4u, 0x59B33D17u, 0x2EB40D81u,
    0xB7BD5C3Bu, 0xC0BA6CADu, 0xEDB88320u, 0x9ABFB3B6u, 0x03B6E20Cu, 0x74B1D29Au,
    0xEAD54739u, 0x9DD277AFu, 0x04DB2615u, 0x73DC1683u, 0xE3630B12u, 0x94643B84u,
    0x0D6D6A3Eu, 0x7A6A5AA8u, 0xE40ECF0Bu, 0x9309FF9Du, 0x0A00AE27u, 0x7D079EB1u,
    0xF00F9344u, 0x8708A3D2u, 0x1E01F268u, 0x6906C2FEu, 0xF762575Du, 0x806567CBu,
    0x196C3671u, 0x6E6B06E7u, 0xFED41B76u, 0x89D32BE0u, 0x10DA7A5Au, 0x67DD4ACCu,
    0xF9B9DF6Fu, 0x8EBEEFF9u, 0x17B7BE43u, 0x60B08ED5u, 0xD6D6A3E8u, 0xA1D1937Eu,
    0x38D8C2C4u, 0x4FDFF252u, 0xD1BB67F1u, 0xA6BC5767u, 0x3FB506DDu, 0x48B2364Bu,
    0xD80D2BDAu, 0xAF0A1B4Cu, 0x36034AF6u, 0x41047A60u, 0xDF60EFC3u, 0xA867DF55u,
    0x316E8EEFu, 0x4669BE79u, 0xCB61B38Cu, 0xBC66831Au, 0x256FD2A0u, 0x5268E236u,
    0xCC0C7795u, 0xBB0B4703u, 0x220216B9u, 0x5505262Fu, 0xC5BA3BBEu, 0xB2BD0B28u,
    0x2BB45A92u, 0x5CB36A04u, 0xC2D7FFA7u, 0xB5D0CF31u, 0x2CD99E8Bu, 0x5BDEAE1Du,
    0x9B64C2B0u, 0xEC63F226u, 0x756AA39Cu, 0x026D930Au, 0x9C0906A9u, 0xEB0E363Fu,
    0x72076785u, 0x05005713u, 0x95BF4A82u, 0xE2B87A14u, 0x7BB12BAEu, 0x0CB61B38u,
    0x92D28E9Bu, 0xE5D5BE0Du, 0x7CDCEFB7u, 0x0BDBDF21u, 0x86D3D2D4u, 0xF1D4E242u,
    0x68DDB3F8u, 0x1FDA836Eu, 0x81BE16CDu, 0xF6B9265Bu, 0x6FB077E1u, 0x18B74777u,
    0x88085AE6u, 0xFF0F6A70u, 0x66063BCAu, 0x11010B5Cu, 0x8F659EFFu, 0xF862AE69u,
    0x616BFFD3u, 0x166CCF45u, 0xA00AE278u, 0xD70DD2EEu, 0x4E048354u, 0x3903B3C2u,
    0xA7672661u, 0xD06016F7u, 0x4969474Du, 0x3E6E77DBu, 0xAED16A4Au, 0xD9D65ADCu,
    0x40DF0B66u, 0x37D83BF0u, 0xA9BCAE53u, 0xDEBB9EC5u, 0x47B2CF7Fu, 0x30B5FFE9u,
    0xBDBDF21Cu, 0xCABAC28Au, 0x53B39330u, 0x24B4A3A6u, 0xBAD03605u, 0xCDD70693u,
    0x54DE5729u, 0x23D967BFu, 0xB3667A2Eu, 0xC4614AB8u, 0x5D681B02u, 0x2A6F2B94u,
    0xB40BBE37u, 0xC30C8EA1u, 0x5A05DF1Bu, 0x2D02EF8Du
};

static uint32_t crc32_buf(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++)
        c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
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
