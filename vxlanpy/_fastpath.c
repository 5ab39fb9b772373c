/*
 * vxlanpy fast path: batch kernels over a FrameBatch (see vxlanpy/batch.py for the layout).
 *
 * Every function takes a whole batch so that one Python->C crossing is spread over many frames.
 * The pure-Python twin (vxlanpy/_fastpath_py.py) implements the same contract; the tests hold
 * the two to byte equality. Slot i starts at buf + i * slot; its VXLAN header is the 8 bytes at
 * headroom - 8 and its inner frame starts at headroom.
 */
#include <stdint.h>

#include "_fastpath.h"
#include <stddef.h>
#include <string.h>

#define VX_HLEN 8
#define VX_ETH_HLEN 14
#define VX_FLAG_I 0x08

/* Status codes: keep in step with wire.STATUS_REASONS. */
#define VX_OK 0
#define VX_TOO_SHORT 1
#define VX_NO_I_FLAG 2
#define VX_RESERVED 3
#define VX_INNER_TOO_SHORT 4

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

static uint32_t fmix32(uint32_t h)
{
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}

static int l4_has_ports(uint8_t proto)
{
    return proto == 6 || proto == 17 || proto == 132 || proto == 136;
}

/* Build the flow key (wire.flow_key) into key[] (at least 1 + 36 + 4 bytes); return its length. */
static size_t flow_key(const uint8_t *f, uint32_t n, uint8_t *key)
{
    size_t k = 0;
    if (n < VX_ETH_HLEN) {
        key[k++] = 0;
        memcpy(key + k, f, n);
        return k + n;
    }
    uint32_t off = 12;
    uint16_t et = (uint16_t)((f[12] << 8) | f[13]);
    while ((et == 0x8100 || et == 0x88A8) && n >= off + 6) {
        off += 4;
        et = (uint16_t)((f[off] << 8) | f[off + 1]);
    }
    uint32_t l3 = off + 2;
    if (et == 0x0800 && n >= l3 + 20 && (f[l3] >> 4) == 4) {
        uint32_t ihl = (uint32_t)(f[l3] & 0x0F) * 4;
        uint8_t proto = f[l3 + 9];
        key[k++] = 4;
        key[k++] = proto;
        memcpy(key + k, f + l3 + 12, 8);
        k += 8;
        uint16_t frag = (uint16_t)(((f[l3 + 6] << 8) | f[l3 + 7]) & 0x3FFF);
        if (frag == 0 && l4_has_ports(proto) && ihl >= 20 && n >= l3 + ihl + 4) {
            memcpy(key + k, f + l3 + ihl, 4);
            k += 4;
        }
        return k;
    }
    if (et == 0x86DD && n >= l3 + 40 && (f[l3] >> 4) == 6) {
        uint8_t nh = f[l3 + 6];
        key[k++] = 6;
        key[k++] = nh;
        memcpy(key + k, f + l3 + 8, 32);
        k += 32;
        if (l4_has_ports(nh) && n >= l3 + 44) {
            memcpy(key + k, f + l3 + 40, 4);
            k += 4;
        }
        return k;
    }
    key[k++] = 0;
    memcpy(key + k, f, 12);
    k += 12;
    key[k++] = (uint8_t)(et >> 8);
    key[k++] = (uint8_t)(et & 0xFF);
    return k;
}

uint32_t vx_flow_hash(const uint8_t *frame, uint32_t len)
{
    uint8_t key[64];
    size_t k;
    if (len < VX_ETH_HLEN) {
        key[0] = 0;
        memcpy(key + 1, frame, len);
        k = 1 + len;
    } else {
        k = flow_key(frame, len, key);
    }
    return fmix32(crc32_buf(key, k));
}

static uint16_t port_from_hash(uint32_t h, uint32_t lo, uint32_t hi)
{
    return (uint16_t)(lo + (((uint64_t)h * (uint64_t)(hi - lo + 1)) >> 32));
}

/*
 * Encapsulate a batch in place: for each slot write the VXLAN header for vni[i] in front of the
 * frame, set payload_len[i] = frame_len[i] + 8 and sport[i] from the inner-flow hash.
 */
void vx_encap_batch(uint8_t *buf, uint32_t slot, uint32_t headroom, uint32_t n,
                    const uint32_t *frame_len, const uint32_t *vni, uint32_t *payload_len,
                    uint16_t *sport, uint32_t lo, uint32_t hi)
{
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *h = buf + (size_t)i * slot + headroom - VX_HLEN;
        uint32_t v = vni[i] & 0xFFFFFFu;
        if (frame_len[i] > slot - headroom) { /* corrupt length: never read past the slot */
            payload_len[i] = 0;
            sport[i] = (uint16_t)lo;
            continue;
        }
        h[0] = VX_FLAG_I;
        h[1] = h[2] = h[3] = 0;
        h[4] = (uint8_t)(v >> 16);
        h[5] = (uint8_t)(v >> 8);
        h[6] = (uint8_t)v;
        h[7] = 0;
        payload_len[i] = frame_len[i] + VX_HLEN;
        sport[i] = port_from_hash(vx_flow_hash(h + VX_HLEN, frame_len[i]), lo, hi);
    }
}

/*
 * Validate a batch of received UDP payloads (payload i at headroom - 8, payload_len[i] bytes).
 * Writes status[i] (VX_OK or a drop code), vni[i] and frame_len[i] (0 when dropped).
 */
void vx_decap_batch(const uint8_t *buf, uint32_t slot, uint32_t headroom, uint32_t n,
                    const uint32_t *payload_len, int strict, uint32_t *vni, int32_t *status,
                    uint32_t *frame_len)
{
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *h = buf + (size_t)i * slot + headroom - VX_HLEN;
        uint32_t len = payload_len[i];
        int32_t st = VX_OK;
        if (len > slot - headroom + VX_HLEN) /* corrupt length: treat as unreadable */
            len = 0;
        vni[i] = 0;
        frame_len[i] = 0;
        if (len < VX_HLEN) {
            st = VX_TOO_SHORT;
        } else if (!(h[0] & VX_FLAG_I)) {
            st = VX_NO_I_FLAG;
        } else if (strict && (h[0] != VX_FLAG_I || h[1] || h[2] || h[3] || h[7])) {
            st = VX_RESERVED;
        } else if (len - VX_HLEN < VX_ETH_HLEN) {
            st = VX_INNER_TOO_SHORT;
        }
        if (st == VX_OK) {
            vni[i] = ((uint32_t)h[4] << 16) | ((uint32_t)h[5] << 8) | h[6];
            frame_len[i] = len - VX_HLEN;
        }
        status[i] = st;
    }
}

/* --- Receive path: complete L4 checksums left partial by a checksum-offloading sender ------- */

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

static uint32_t get16(const uint8_t *p)
{
    return ((uint32_t)p[0] << 8) | p[1];
}

static void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/*
 * One's-complement sum of p[0..n) as native-order 16-bit words, folded and returned in the
 * big-endian convention of sum16 (byte order only permutes the bytes of a one's-complement
 * sum). Four independent 64-bit accumulators with end-around carry (2^64 = 1 mod 0xFFFF, and
 * a nonzero sum never turns to 0): 32 bytes per iteration without vector code, about twice as
 * fast at -O2 as one 32-bit-word accumulator, which gcc does not vectorise when inlined.
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
    w16 = fold16(s);
    uint8_t b[2];
    memcpy(b, &w16, 2);
    return get16(b);
}

/* Complete the TCP/UDP checksum of one frame f[0..len) (len >= 14); 1 if it was rewritten. */
static int complete_one(uint8_t *f, uint32_t len)
{
    uint16_t et = (uint16_t)((f[12] << 8) | f[13]);
    uint8_t *ip = f + VX_ETH_HLEN;
    uint32_t avail = len - VX_ETH_HLEN;
    uint8_t *l4;
    uint32_t l4len;
    uint8_t proto;
    uint64_t pseudo;
    int v4 = 0;

    if (et == 0x0800) {
        if (avail < 20 || (ip[0] >> 4) != 4)
            return 0;
        uint32_t ihl = (uint32_t)(ip[0] & 0x0F) * 4;
        uint32_t tot = ((uint32_t)ip[2] << 8) | ip[3];
        if (ihl < 20 || tot > avail || tot < ihl)
            return 0;
        if ((((uint32_t)ip[6] << 8) | ip[7]) & 0x3FFF) /* MF set or offset: a fragment */
            return 0;
        proto = ip[9];
        l4 = ip + ihl;
        l4len = tot - ihl;
        pseudo = sum16(ip + 12, 8) + proto + l4len;
        v4 = 1;
    } else if (et == 0x86DD) {
        if (avail < 40 || (ip[0] >> 4) != 6)
            return 0;
        proto = ip[6];
        l4len = ((uint32_t)ip[4] << 8) | ip[5];
        if (l4len > avail - 40)
            return 0;
        l4 = ip + 40;
        pseudo = sum16(ip + 8, 32) + proto + l4len;
    } else {
        return 0;
    }

    uint32_t hlen, coff;
    if (proto == 6) {
        hlen = 20;
        coff = 16;
    } else if (proto == 17) {
        hlen = 8;
        coff = 6;
    } else {
        return 0;
    }
    if (l4len < hlen)
        return 0;

    uint16_t field = (uint16_t)((l4[coff] << 8) | l4[coff + 1]);
    if (v4 && proto == 17 && field == 0) /* UDP over IPv4 without a checksum */
        return 0;
    uint64_t total = pseudo + vx_csum16(l4, l4len);
    if (fold16(total) == 0xFFFF) /* already verifies */
        return 0;
    if (field != fold16(pseudo)) /* not the partial state: a wrong checksum, not ours to fix */
        return 0;
    uint16_t c = (uint16_t)~fold16(total + (uint16_t)~field); /* ~field: -field, one's comp. */
    if (proto == 17 && c == 0)
        c = 0xFFFF;
    l4[coff] = (uint8_t)(c >> 8);
    l4[coff + 1] = (uint8_t)c;
    return 1;
}

/*
 * Complete CHECKSUM_PARTIAL TCP/UDP checksums in the inner frames of a batch (frame i at
 * headroom, frame_len[i] bytes). A checksum field that holds exactly the folded pseudo-header
 * sum is replaced by the full checksum; correct and otherwise wrong checksums are left alone.
 * Returns how many frames were rewritten.
 */
uint32_t vx_complete_checksums(uint8_t *buf, uint32_t slot, uint32_t headroom, uint32_t n,
                               const uint32_t *frame_len)
{
    uint32_t fixed = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t len = frame_len[i];
        if (len < VX_ETH_HLEN || len > slot - headroom) /* short, or a corrupt length */
            continue;
        fixed += (uint32_t)complete_one(buf + (size_t)i * slot + headroom, len);
    }
    return fixed;
}

/* --- Transmit path: TCP segmentation of a GSO super-frame (TSO) ---------------------------- */

#define VX_TCP_FIN 0x01
#define VX_TCP_PSH 0x08
#define VX_TCP_CWR 0x80


/*
 * Segment the TCP super-frame f[0..len) (untagged Ethernet + IPv4 or IPv6 + TCP) into segments
 * of at most gso_size payload bytes, written to slots first, first + 1, ... of the batch at out
 * (frame at out + slot * i + headroom, at most max_frame bytes), with frame_len[i] and
 * vni_out[i] = vni set. Returns the number of segments, or 0 (nothing written) when the frame
 * cannot be segmented or the segments do not fit. See fastpath.py for the per-segment contract.
 * Header sums are taken once and adjusted per segment; only the payload is summed per segment.
 */
uint32_t vx_tso_segment(const uint8_t *f, uint32_t len, uint32_t gso_size, uint32_t vni,
                        uint8_t *out, uint32_t slot, uint32_t headroom, uint32_t max_frame,
                        uint32_t first, uint32_t capacity, uint32_t *frame_len,
                        uint32_t *vni_out)
{
    if (len < VX_ETH_HLEN + 20 || gso_size == 0)
        return 0;
    uint32_t et = get16(f + 12);
    const uint8_t *ip = f + VX_ETH_HLEN;
    uint32_t avail = len - VX_ETH_HLEN;
    uint32_t iphl, iplen;
    uint64_t pseudo; /* pseudo-header sum without the TCP length */
    int v4;

    if (et == 0x0800) {
        if ((ip[0] >> 4) != 4 || ip[9] != 6)
            return 0;
        iphl = (uint32_t)(ip[0] & 0x0F) * 4;
        iplen = get16(ip + 2);
        if (iphl < 20 || iplen > avail || iplen < iphl)
            return 0;
        if (get16(ip + 6) & 0x3FFF) /* MF set or offset: a fragment */
            return 0;
        pseudo = sum16(ip + 12, 8) + 6;
        v4 = 1;
    } else if (et == 0x86DD) {
        if (avail < 40 || (ip[0] >> 4) != 6 || ip[6] != 6)
            return 0;
        iphl = 40;
        iplen = 40 + get16(ip + 4);
        if (iplen > avail)
            return 0;
        pseudo = sum16(ip + 8, 32) + 6;
        v4 = 0;
    } else {
        return 0;
    }

    const uint8_t *th = ip + iphl;
    uint32_t tcplen = iplen - iphl;
    if (tcplen < 20)
        return 0;
    uint32_t thl = (uint32_t)(th[12] >> 4) * 4;
    if (thl < 20 || thl > tcplen)
        return 0;
    uint32_t plen = tcplen - thl; /* TCP payload: below 65536 */
    if (plen == 0)
        return 0;
    uint32_t n = (plen - 1) / gso_size + 1;
    uint32_t hlen = VX_ETH_HLEN + iphl + thl;
    uint32_t mss = gso_size < plen ? gso_size : plen;
    if (first > capacity || n > capacity - first || hlen + mss > max_frame)
        return 0;

    /* Header sums without the fields that change per segment (and without the checksums). */
    uint32_t ip_id = v4 ? get16(ip + 4) : 0;
    uint64_t ip_base = v4 ? sum16(ip, iphl) - get16(ip + 2) - ip_id - get16(ip + 10) : 0;
    uint32_t seq = ((uint32_t)get16(th + 4) << 16) | get16(th + 6);
    uint8_t flags = th[13];
    uint64_t th_base = sum16(th, thl) - get16(th + 4) - get16(th + 6) - get16(th + 12)
                       - get16(th + 16);
    const uint8_t *payload = th + thl;

    for (uint32_t k = 0; k < n; k++) {
        uint32_t off = k * gso_size; /* k < n, so off < plen: no overflow */
        uint32_t chunk = plen - off < gso_size ? plen - off : gso_size;
        uint32_t l4len = thl + chunk;
        uint8_t *d = out + (size_t)(first + k) * slot + headroom;
        uint8_t *dip = d + VX_ETH_HLEN;
        uint8_t *dth = dip + iphl;

        memcpy(d, f, hlen);
        memcpy(dth + thl, payload + off, chunk);
        if (v4) {
            uint32_t tot = iphl + l4len;
            uint32_t id = (ip_id + k) & 0xFFFFu;
            put16(dip + 2, tot);
            put16(dip + 4, id);
            put16(dip + 10, (uint16_t)~fold16(ip_base + tot + id));
        } else {
            put16(dip + 4, l4len);
        }
        uint32_t sq = seq + off; /* mod 2^32 */
        uint8_t fl = flags;
        if (k != 0)
            fl &= (uint8_t)~VX_TCP_CWR;
        if (k != n - 1)
            fl &= (uint8_t)~(VX_TCP_FIN | VX_TCP_PSH);
        put16(dth + 4, sq >> 16);
        put16(dth + 6, sq & 0xFFFFu);
        dth[13] = fl;
        uint64_t s = pseudo + l4len + th_base + (sq >> 16) + (sq & 0xFFFFu)
                     + ((uint32_t)th[12] << 8) + fl + vx_csum16(dth + thl, chunk);
        put16(dth + 16, (uint16_t)~fold16(s));
        frame_len[first + k] = hlen + chunk;
        vni_out[first + k] = vni;
    }
    return n;
}
