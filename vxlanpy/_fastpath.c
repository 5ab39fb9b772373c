/*
 * vxlanpy fast path: batch kernels over a FrameBatch (see vxlanpy/batch.py for the layout).
 *
 * Every function takes a whole batch so that one Python->C crossing is spread over many frames.
 * The pure-Python twin (vxlanpy/_fastpath_py.py) implements the same contract; the tests hold
 * the two to byte equality. Slot i starts at buf + i * slot; its VXLAN header is the 8 bytes at
 * headroom - 8 and its inner frame starts at headroom.
 */
#include <stdint.h>
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

/* CRC-32 (IEEE 802.3, reflected, as zlib.crc32), table built on first use. */
static uint32_t crc_table[256];
static int crc_ready = 0;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
    crc_ready = 1;
}

static uint32_t crc32_buf(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    if (!crc_ready)
        crc_init();
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
