/*
 * Wire -> device in C: decapsulate each received datagram, match it against what the engine
 * installed (the segment's rule, then the entry of its inner source MAC and the VTEP it came
 * from) and deliver it to the segment's TAP, or send it up. Also the UDP GRO expansion of the
 * receive pump: a receive of several datagrams is coalesced (gro.c) or split.
 */
#include <netinet/in.h>
#include <sys/socket.h>

#include "vx_internal.h"

static uint32_t rx_match(const uint8_t *f)
{
    uint32_t m = VX_RXM_ANY | ((f[6] & 1) ? VX_RXM_GROUP_SRC : 0), et = vx_get16(f + 12);
    if (vx_mac48(f + 6) == 0)
        m |= VX_RXM_ZERO_SRC;
    if (et == VX_ETH_P_8021Q || et == VX_ETH_P_8021AD)
        m |= VX_RXM_VLAN;
    return m;
}

static int same_ip(const uint8_t *sa, const uint8_t *src)
{
    uint16_t fa, fb;
    memcpy(&fa, sa, 2);
    memcpy(&fb, src, 2);
    if (fa != fb)
        return 0;
    if (fa == AF_INET)
        return memcmp(sa + 4, src + 4, 4) == 0;
    if (fa == AF_INET6)
        return memcmp(sa + 8, src + 8, 16) == 0;
    return 0;
}

/* Is the source sockaddr src in one of g's allowed prefixes? */
static int allowed(const vx_segment *g, const uint8_t *src)
{
    uint16_t fam;
    memcpy(&fam, src, 2);
    const uint8_t *a = fam == AF_INET ? src + 4 : src + 8; /* sin_addr / sin6_addr */
    for (uint32_t k = 0; k < g->nallow; k++) {
        const vx_prefix *p = &g->allow[k];
        if (p->family != fam)
            continue;
        uint32_t bits = p->len, full = bits / 8, rest = bits % 8;
        if (memcmp(a, p->addr, full))
            continue;
        if (rest && ((a[full] ^ p->addr[full]) & (uint8_t)(0xFF << (8 - rest))))
            continue;
        return 1;
    }
    return 0;
}

/* Did the datagram with source sockaddr src come from one of action a's remotes? */
static int from_remote(const vx_dp *dp, uint32_t a, const uint8_t *src)
{
    const vx_action *act = &dp->actions[a];
    for (uint32_t k = 0; k < act->n; k++)
        if (same_ip(dp->remotes[act->remote[k]].sa, src))
            return 1;
    return 0;
}

/* Decapsulate slots first..first+n-1 and complete partial inner checksums (as configured). */
static void rx_decap(vx_dp *dp, vx_batch *b, uint32_t first, uint32_t n)
{
    pthread_mutex_lock(&dp->lock);
    int strict = dp->cfg.strict, csum = dp->cfg.complete_checksums;
    int ecn = dp->cfg.outer.ecn_decap;
    pthread_mutex_unlock(&dp->lock);
    vx_decap(b, first, n, strict);
    if (ecn)
        vx_ecn_decap(b, first, n);
    if (!csum)
        return;
    uint32_t fixed = vx_complete_checksums(b, first, n);
    pthread_mutex_lock(&dp->lock);
    dp->c.checksums_completed += fixed;
    pthread_mutex_unlock(&dp->lock);
}

/* Set action[i] for the decapsulated slots order[0..n), taken in that order (wire order); see
 * vx_rx_classify. Returns hits. */
static int rx_decide(vx_dp *dp, vx_batch *b, const uint32_t *order, uint32_t n, uint64_t now_ms)
{
    int hits = 0;
    /* Source MACs sent up in this batch: the engine may learn or move them, so their later
     * frames go up too (the engine sees each MAC's frames in order, as without C). */
    uint64_t up[64];
    uint32_t nup = 0, peer = 0;
    const uint8_t *last_src = NULL; /* the source of the last delivery, its row peer */
    pthread_mutex_lock(&dp->lock);
    int last_vni = -1, s = -1, strict_gbp = dp->cfg.strict == VX_STRICT_GBP;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t i = order[k];
        b->action[i] = VX_UPCALL;
        if (b->payload_len[i] == VX_LEN_TRUNCATED) {
            b->action[i] = VX_DROP;
            dp->c.truncated++;
            continue;
        }
        if (b->status[i] != VX_ST_OK)
            continue;
        /* strict, but the VXLAN-GBP bits let through: whether they may be set here is for the
         * engine to say (a segment with GBP on, or reserved bits) */
        const uint8_t *h = vx_payload(b, i);
        if (strict_gbp && ((h[0] & VX_GBP_G) || h[1] || h[2] || h[3]))
            continue;
        if ((int)b->vni[i] != last_vni) {
            last_vni = (int)b->vni[i];
            s = vx_seg_index(dp, b->vni[i]);
        }
        if (s < 0)
            continue;
        vx_segment *g = &dp->segs[s];
        const uint8_t *f = vx_frame(b, i);
        const uint8_t *src = b->addrs + (size_t)i * VX_ADDR_LEN;
        if (rx_match(f) & g->rule.rx_up || g->rule.rx_from == VX_FROM_NONE
            || (g->rule.rx_from == VX_FROM_ALLOWED && !allowed(g, src)))
            continue;
        uint64_t key = ((uint64_t)(s + 1) << 48) | vx_mac48(f + 6);
        int earlier = nup == 64;
        for (uint32_t q = 0; q < nup && !earlier; q++)
            earlier = up[q] == key;
        if (earlier)
            continue;
        vx_entry *e = vx_find(dp, (uint32_t)s, f + 6);
        int ok = e != NULL ? (e->flags & VX_EF_DELIVER_ANY)
                                 || ((e->flags & VX_EF_DELIVER) && from_remote(dp, e->action, src))
                           : g->rule.rx_miss != VX_MISS_UPCALL;
        if (e == NULL && g->rule.rx_miss == VX_MISS_REFUSE)
            g->c.learn_refused++;
        if (!ok) {
            up[nup++] = key; /* to learn, a move, a spoof, ...: the engine decides */
            continue;
        }
        if (e != NULL && (e->flags & VX_EF_REFRESH))
            e->seen_ms = now_ms;
        b->action[i] = s;
        g->c.rx_packets++;
        g->c.rx_bytes += b->frame_len[i];
        if (last_src == NULL || !same_ip(last_src, src)) {
            peer = vx_peer_of(dp, src);
            last_src = src;
        }
        dp->peers[peer].rx_packets++;
        dp->peers[peer].rx_bytes += b->frame_len[i];
        hits++;
    }
    pthread_mutex_unlock(&dp->lock);
    return hits;
}

/*
 * Wire -> device, received payloads in slots first..first+n-1 (sources in addrs): decapsulate,
 * complete partial inner checksums, then action[i] = segment index for a frame delivered by C,
 * VX_UPCALL or VX_DROP (a datagram too large for its slot); order[i] = i. Returns hits.
 */
int vx_rx_classify(vx_dp *dp, vx_batch *b, uint32_t first, uint32_t n, uint64_t now_ms)
{
    VX_EXCLUSIVE(dp);
    if (first > b->capacity || n > b->capacity - first)
        return 0;
    for (uint32_t i = first; i < first + n; i++) {
        b->order[i] = i;
        b->offload[i] = 0;
    }
    rx_decap(dp, b, first, n);
    return rx_decide(dp, b, b->order + first, n, now_ms);
}

/*
 * UDP GRO (a socket with UDP_GRO on): one receive can hold several datagrams of one flow back
 * to back, each gso_size[m] bytes but the last. Consecutive TCP segments of one stream are
 * coalesced in place into one datagram carrying a super-frame, when the segment's TAP takes GSO
 * frames (vnet and mtu set: vx_tap_write gives it a GSO header); anything else is split: the
 * first datagram stays in slot m, the others are copied to the spill slots (next..). Slots go
 * to order[] in wire order. Returns 0, or -1 if the spill slots cannot take the split now (the
 * pump finishes this batch and comes back for slot m). A receive of more datagrams than the
 * spill slots can ever take (more than capacity - area + 1) is dropped as truncated.
 */
static int rx_expand(vx_dp *dp, vx_batch *b, uint32_t area, uint32_t m, uint32_t *next,
                     uint32_t *nout)
{
    uint32_t len = b->payload_len[m], g = b->gso_size[m];
    uint8_t *p = vx_payload(b, m);
    b->offload[m] = 0;
    if (len == VX_LEN_TRUNCATED || g == 0 || len <= g) {
        b->order[(*nout)++] = m;
        return 0;
    }
    uint32_t nseg = (len - 1) / g + 1;
    if (nseg - 1 > b->capacity - area) {
        b->payload_len[m] = VX_LEN_TRUNCATED;
        b->order[(*nout)++] = m;
        return 0;
    }
    if (*next + nseg - 1 > b->capacity)
        return -1;
    pthread_mutex_lock(&dp->lock);
    int s = len >= VX_HLEN
                ? vx_seg_index(dp, ((uint32_t)p[4] << 16) | ((uint32_t)p[5] << 8) | p[6])
                : -1;
    int gso_tap = s >= 0 && dp->segs[s].vnet && dp->segs[s].mtu;
    dp->c.gro_receives++;
    pthread_mutex_unlock(&dp->lock);
    b->order[(*nout)++] = m;
    uint32_t c = gso_tap ? vx_gro_coalesce(p, len, g) : 0;
    pthread_mutex_lock(&dp->lock);
    if (c)
        dp->c.gro_coalesced++;
    else
        dp->c.gro_split++;
    pthread_mutex_unlock(&dp->lock);
    if (c) {
        b->payload_len[m] = c;
        b->offload[m] = VX_OFF_COALESCED; /* its checksums are checked and rewritten */
        return 0;
    }
    for (uint32_t t = 1; t < nseg; t++) {
        uint32_t d = (*next)++;
        uint32_t plen = t + 1 < nseg ? g : len - t * g;
        memcpy(vx_payload(b, d), p + (size_t)t * g, plen);
        memcpy(b->addrs + (size_t)d * VX_ADDR_LEN, b->addrs + (size_t)m * VX_ADDR_LEN,
               VX_ADDR_LEN);
        b->tos[d] = b->tos[m];
        b->payload_len[d] = plen;
        b->gso_size[d] = 0;
        b->offload[d] = 0;
        b->order[(*nout)++] = d;
    }
    b->payload_len[m] = g;
    return 0;
}

/* Write the frames that order[0..n) says C delivers, one write loop per segment (usually there
 * is one), in wire order. Counts the upcalls in *upcalls. Returns 0, or -errno with *gone_vni
 * set when a TAP is gone. */
static int rx_write(vx_dp *dp, vx_batch *b, uint32_t n, uint32_t *upcalls, int64_t *gone_vni)
{
    uint32_t slots[VX_MAX_BATCH];
    uint8_t written[VX_MAX_BATCH];
    memset(written, 0, b->capacity);
    for (uint32_t first = 0; first < n; first++) {
        int32_t s = b->action[b->order[first]];
        if (s == VX_UPCALL)
            (*upcalls)++;
        if (s < 0 || written[b->order[first]])
            continue;
        uint32_t k = 0;
        for (uint32_t j = first; j < n; j++) {
            uint32_t i = b->order[j];
            if (b->action[i] == s) {
                slots[k++] = i;
                written[i] = 1;
            }
        }
        vx_segment *g = &dp->segs[s];
        uint32_t errs = 0;
        int w = vx_tap_write(g->tap_fd, g->vnet, g->mtu, b, slots, k, &errs);
        if (errs) {
            pthread_mutex_lock(&dp->lock);
            g->c.tap_write_errors += errs;
            pthread_mutex_unlock(&dp->lock);
        }
        if (w < 0) {
            *gone_vni = g->vni;
            return w;
        }
    }
    return 0;
}

/*
 * Wire -> device: receive a batch from the UDP socket fd (recvmmsg, into slots
 * 0..capacity-spill-1), split or coalesce UDP GRO receives (rx_expand; the last `spill` slots
 * take split datagrams), classify and write the delivered frames to their TAPs. Repeats up to
 * `rounds` batches while nothing needs the engine (1: every batch comes back, for a tracer to
 * see what C did with it). Returns datagrams in the last batch, listed
 * in order[0..n) (upcall slots marked, out[0] of them), 0 when the socket is drained, or
 * -errno: a socket error (an ICMP report; *gone_vni = -1) or a TAP gone (*gone_vni = its VNI).
 * out[1]: 0 the socket is drained; 1 it may hold more; 2 received datagrams still wait in the
 * batch (a split that did not fit): call again, with the same batch, before anything else.
 */
int vx_rx_pump(vx_dp *dp, int fd, vx_batch *b, uint64_t now_ms, uint32_t rounds,
               uint32_t spill, uint32_t *out, int64_t *gone_vni)
{
    VX_EXCLUSIVE(dp);
    out[0] = out[1] = 0;
    *gone_vni = -1;
    if (b->capacity > VX_MAX_BATCH || spill >= b->capacity)
        return -EINVAL;
    uint32_t area = b->capacity - spill, received = 0, handled = 0;
    if (dp->pend_hi > dp->pend_lo && dp->pend_buf != b->buf) {
        pthread_mutex_lock(&dp->lock);
        dp->c.gro_pending_dropped += dp->pend_hi - dp->pend_lo;
        pthread_mutex_unlock(&dp->lock);
        dp->pend_lo = dp->pend_hi = 0;
    }
    for (;;) {
        uint32_t lo = dp->pend_lo, hi = dp->pend_hi, full = dp->pend_full;
        dp->pend_lo = dp->pend_hi = 0;
        if (hi == lo) {
            if (received++ == rounds) {
                out[1] = VX_RX_MORE;
                return 0;
            }
            uint32_t trunc = 0;
            int n = 0;
            /* ask for about twice what the last batch brought (at least VX_RECV_FIRST),
             * doubling while the calls come back full: each slot asked for is a message
             * header, an iovec and a control buffer written first, cold after an idle spell;
             * a ping's one datagram then pays for 8 of them, not VX_RECV_CHUNK */
            uint32_t ask = dp->recv_ask ? dp->recv_ask : VX_RECV_FIRST;
            while ((uint32_t)n < area) {
                uint32_t lim = area - (uint32_t)n > ask ? (uint32_t)n + ask : area;
                uint32_t want = vx_recv_want((uint32_t)n, lim);
                int r = vx_udp_recv(fd, b, (uint32_t)n, lim, spill > 0, &trunc);
                if (r < 0) {
                    if (n == 0)
                        return r;
                    break;
                }
                n += r;
                /* fewer than asked: the queue was empty then; what came meanwhile waits for
                 * the next call (not one more recvmmsg that would find nothing in front of
                 * the frames already here) */
                if ((uint32_t)r < want)
                    break;
                ask = vx_recv_ask_next(ask);
            }
            dp->recv_ask = vx_recv_ask_next((uint32_t)n);
            if (n == 0) {
                out[1] = VX_RX_DRAINED;
                return 0;
            }
            pthread_mutex_lock(&dp->lock);
            dp->c.rx_batches[vx_batch_bucket((uint32_t)n)]++;
            dp->c.rx_batch_frames += (uint32_t)n;
            pthread_mutex_unlock(&dp->lock);
            lo = 0;
            hi = (uint32_t)n;
            full = hi == area;
        }
        uint32_t next = area, nout = 0, m;
        for (m = lo; m < hi; m++)
            if (rx_expand(dp, b, area, m, &next, &nout) < 0)
                break;
        if (m < hi) {
            dp->pend_buf = b->buf;
            dp->pend_lo = m;
            dp->pend_hi = hi;
            dp->pend_full = full;
        }
        rx_decap(dp, b, lo, m - lo);
        rx_decap(dp, b, area, next - area);
        rx_decide(dp, b, b->order, nout, now_ms);
        int w = rx_write(dp, b, nout, &out[0], gone_vni);
        if (w < 0)
            return w;
        out[1] = m < hi ? VX_RX_PENDING : full ? VX_RX_MORE : VX_RX_DRAINED;
        if (out[0] || out[1] == 0 || ++handled == rounds)
            return (int)nout;
    }
}
