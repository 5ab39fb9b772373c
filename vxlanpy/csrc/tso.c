/*
 * TCP segmentation of a super-frame (TSO): a TAP with TSO offload hands over TCP frames of up
 * to 64 KiB with the segment size in their virtio-net header; the wire wants MTU-sized frames.
 * Part of the offload unit (offload.c); the Python twin is _offload_py.tso_segment.
 */
#include "vx_internal.h"

/*
 * Cut the TCP super-frame in slot i of b (untagged Ethernet + IPv4, not a fragment, or IPv6
 * with next header TCP, + TCP with a payload) into chunks of at most gso_size payload bytes,
 * written to slots first, first + 1, ... of out (frame_len set, vni copied from b->vni[i]).
 * Each chunk gets IPv4 total length / IPv6 payload length, IPv4 id + k and header checksum, TCP
 * seq + k * gso_size, FIN and PSH only on the last chunk, CWR only on the first, and a full
 * TCP checksum (the input's checksum field is ignored). Returns the number of chunks, or 0
 * (nothing written) when the frame cannot be cut or the chunks do not fit (slots, max_frame).
 * Header sums are taken once and adjusted per chunk; only the payload is summed per chunk.
 */
uint32_t vx_tso_cut(const vx_batch *b, uint32_t i, uint32_t gso_size, vx_batch *out,
                    uint32_t first)
{
    const uint8_t *f = vx_frame(b, i);
    uint32_t len = b->frame_len[i];
    vx_l3l4 h;
    if (gso_size == 0 || len > b->slot - b->headroom || !vx_parse(f, len, &h) || h.tags
        || !h.ok || h.fragment || h.proto != 6)
        return 0;
    int v4 = h.ip == 4;
    const uint8_t *ip = f + h.l3;
    const uint8_t *th = f + h.l4;
    uint32_t iphl = (uint32_t)(h.l4 - h.l3), tcplen = h.l4_len;
    if (tcplen < 20)
        return 0;
    uint32_t thl = (uint32_t)(th[12] >> 4) * 4;
    if (thl < 20 || thl > tcplen)
        return 0;
    uint32_t plen = tcplen - thl; /* TCP payload: below 65536 */
    if (plen == 0)
        return 0;
    uint32_t n = (plen - 1) / gso_size + 1;
    uint32_t hlen = h.l4 + thl;
    uint32_t mss = gso_size < plen ? gso_size : plen;
    if (first > out->capacity || n > out->capacity - first || hlen + mss > out->max_frame)
        return 0;

    /* Header sums without the fields that change per chunk (and without the checksums). */
    uint64_t pseudo = vx_pseudo(f, &h);
    uint32_t ip_id = v4 ? vx_get16(ip + 4) : 0;
    uint64_t ip_base = v4 ? vx_sum16(ip, iphl) - vx_get16(ip + 2) - ip_id - vx_get16(ip + 10)
                          : 0;
    uint32_t seq = vx_get32(th + 4);
    uint8_t flags = th[13];
    uint64_t th_base = vx_sum16(th, thl) - vx_get16(th + 4) - vx_get16(th + 6)
                       - vx_get16(th + 12) - vx_get16(th + 16);
    const uint8_t *payload = th + thl;

    for (uint32_t k = 0; k < n; k++) {
        uint32_t off = k * gso_size; /* k < n, so off < plen: no overflow */
        uint32_t chunk = plen - off < gso_size ? plen - off : gso_size;
        uint32_t l4len = thl + chunk;
        uint8_t *d = vx_frame(out, first + k);
        uint8_t *dip = d + h.l3;
        uint8_t *dth = d + h.l4;

        memcpy(d, f, hlen);
        memcpy(dth + thl, payload + off, chunk);
        if (v4) {
            uint32_t tot = iphl + l4len;
            uint32_t id = (ip_id + k) & 0xFFFFu;
            vx_put16(dip + 2, tot);
            vx_put16(dip + 4, id);
            vx_put16(dip + 10, (uint16_t)~vx_fold16(ip_base + tot + id));
        } else {
            vx_put16(dip + 4, l4len);
        }
        uint32_t sq = seq + off; /* mod 2^32 */
        uint8_t fl = flags;
        if (k != 0)
            fl &= (uint8_t)~VX_TCP_CWR;
        if (k != n - 1)
            fl &= (uint8_t)~(VX_TCP_FIN | VX_TCP_PSH);
        vx_put16(dth + 4, sq >> 16);
        vx_put16(dth + 6, sq & 0xFFFFu);
        dth[13] = fl;
        uint64_t s = pseudo + l4len + th_base + (sq >> 16) + (sq & 0xFFFFu)
                     + ((uint32_t)th[12] << 8) + fl + vx_csum16(dth + thl, chunk);
        vx_put16(dth + 16, (uint16_t)~vx_fold16(s));
        out->frame_len[first + k] = hlen + chunk;
        out->vni[first + k] = b->vni[i];
    }
    return n;
}
