/*
 * vxlanpy datapath: the forwarding cache (fast path) and the batched pumps built on it.
 *
 * Open vSwitch's split: the cache is a mirror of the Python FDBs (engine.py stays the source of
 * truth and pushes every change here); the C side forwards what the cache can decide alone and
 * leaves everything else marked as an upcall for the Python engine:
 *
 *   device -> wire: a unicast destination MAC with exactly one remote (no per-remote VNI) is a
 *     hit: encapsulated and sent from C. Short frames, VLAN tags the segment refuses, ARP when
 *     the segment proxies, broadcast/multicast (flooding) and misses go up.
 *   wire -> device: a valid header for a served VNI, a sane source MAC, and a source MAC the
 *     cache maps to the datagram's source IP (learned: its last-seen time is refreshed here) or,
 *     with learning off, a MAC the cache does not hold, is delivered from C. A MAC to learn or
 *     move, a spoof, a drop reason to record: up.
 *
 * action[i] says what happened to slot i: >= 0 forwarded here (the remote id on transmit, the
 * segment index on receive), VX_ACT_UPCALL for the Python engine, VX_ACT_DROP dropped and
 * counted here (a truncated datagram). A mutex guards the cache (cffi releases the GIL around
 * each call); vxlanpy calls the pumps from one thread, its event loop. An optional sender thread
 * (vx_dp_sender_start) sends the TCP super-frames that the transmit pump has cut, so device ->
 * wire runs on two cores; it touches only its job ring, the send counters and the sockets.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "_fastpath.h"

#define VX_HLEN 8
#define VX_ETH_HLEN 14
#define VX_ADDR_LEN 28
#define VX_TRUNCATED 0xFFFFFFFFu
#define VX_ACT_UPCALL (-1)
#define VX_ACT_DROP (-2)
#define VX_MAX_SEGS 4096
#define VX_MAX_REMOTES 65536
#define VX_REMOTE_NONE 0xFFFFFFFFu /* the entry exists but only Python can forward to it */
#define VX_F_STATIC 1u
#define VX_F_LEARNED 2u
#define VX_SEG_LEARNING 1u
#define VX_SEG_VLAN 2u
#define VX_SEG_PROXY 4u
#define VX_KEY_TOMB 1u
#define VX_NCOUNTERS 6 /* rx_packets, rx_bytes, tx_packets, tx_bytes, tap_errors, gso_frames */
#define VX_MAX_BATCH 1024
#define VX_NGRO 4
#define VX_RX_VERIFIED 1 /* vnet_flags of a received slot: coalesced, checksums verified */

typedef struct {
    uint64_t key; /* (segment index + 1) << 48 | MAC; 0 empty, 1 deleted */
    uint64_t seen_ms;
    uint32_t remote;
    uint32_t flags;
} vx_entry;

typedef struct {
    uint32_t vni, flags, vnet, mtu, used;
    int tap_fd;
    uint64_t local_mac; /* 0: none */
    uint64_t c[VX_NCOUNTERS];
} vx_seg;

typedef struct {
    uint8_t sa[VX_ADDR_LEN]; /* where to send: sockaddr_in or sockaddr_in6 with the port */
    uint32_t salen;
} vx_remote;

/*
 * The sender thread (device -> wire pipeline): the pump's thread reads the TAP, classifies and
 * cuts super-frames into a job; this thread sends the jobs (UDP GSO), so the send, and the
 * receive that veth runs inside it on the peer's side, use the other core. Jobs form a ring:
 * head is the next job the pump fills, tail the next one the sender sends.
 */
#define VX_JOBS 4
typedef struct {
    vx_batch b; /* room for the segments of one super-frame */
    uint32_t n; /* segments in it, encapsulated */
    int fd;
    vx_remote r;
} vx_job;

typedef struct vx_sender {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t work, done;
    uint32_t head, tail;
    int stop;
    vx_job jobs[VX_JOBS];
} vx_sender;

struct vx_dp {
    pthread_mutex_t lock;
    vx_entry *tab;
    uint64_t cap, used, tomb;
    vx_seg segs[VX_MAX_SEGS];
    uint32_t nsegs;
    vx_remote *remotes;
    int32_t port_fd[65536];
    uint32_t lo, hi;
    int strict, no_gso, csum;
    uint64_t truncated, checksums, send_err[256];
    uint64_t gro[VX_NGRO]; /* receives of several datagrams, coalesced, split, pending drops */
    const uint8_t *pend_buf; /* the batch whose slots pend_lo..pend_hi-1 wait for the pump */
    uint32_t pend_lo, pend_hi, pend_full; /* pend_full: their receive filled the batch */
    vx_sender *sender; /* NULL: super-frames are sent by the pump's own thread */
};

static uint64_t mix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

static uint64_t mac48(const uint8_t *m)
{
    return ((uint64_t)m[0] << 40) | ((uint64_t)m[1] << 32) | ((uint64_t)m[2] << 24) |
           ((uint64_t)m[3] << 16) | ((uint64_t)m[4] << 8) | m[5];
}

static uint64_t key_of(uint32_t seg, uint64_t mac)
{
    return ((uint64_t)(seg + 1) << 48) | mac;
}

static vx_entry *find(vx_dp *dp, uint64_t key)
{
    uint64_t mask = dp->cap - 1;
    for (uint64_t i = mix64(key) & mask;; i = (i + 1) & mask) {
        vx_entry *e = &dp->tab[i];
        if (e->key == key)
            return e;
        if (e->key == 0)
            return NULL;
    }
}

static int resize(vx_dp *dp, uint64_t cap)
{
    vx_entry *tab = calloc(cap, sizeof(vx_entry));
    if (tab == NULL)
        return -ENOMEM;
    for (uint64_t j = 0; j < dp->cap; j++) {
        vx_entry *e = &dp->tab[j];
        if (e->key <= VX_KEY_TOMB)
            continue;
        uint64_t i = mix64(e->key) & (cap - 1);
        while (tab[i].key)
            i = (i + 1) & (cap - 1);
        tab[i] = *e;
    }
    free(dp->tab);
    dp->tab = tab;
    dp->cap = cap;
    dp->tomb = 0;
    return 0;
}

static vx_entry *insert(vx_dp *dp, uint64_t key)
{
    vx_entry *e = find(dp, key);
    if (e != NULL)
        return e;
    if ((dp->used + dp->tomb + 1) * 4 > dp->cap * 3) {
        uint64_t cap = 16;
        while (cap < (dp->used + 1) * 2)
            cap <<= 1;
        if (resize(dp, cap < dp->cap ? dp->cap : cap) < 0)
            return NULL;
    }
    uint64_t mask = dp->cap - 1;
    uint64_t i = mix64(key) & mask;
    while (dp->tab[i].key > VX_KEY_TOMB)
        i = (i + 1) & mask;
    if (dp->tab[i].key == VX_KEY_TOMB)
        dp->tomb--;
    dp->used++;
    e = &dp->tab[i];
    memset(e, 0, sizeof(*e));
    e->key = key;
    return e;
}

static void erase(vx_dp *dp, vx_entry *e)
{
    e->key = VX_KEY_TOMB;
    dp->used--;
    dp->tomb++;
}

static int seg_index(const vx_dp *dp, uint32_t vni)
{
    for (uint32_t s = 0; s < dp->nsegs; s++)
        if (dp->segs[s].used && dp->segs[s].vni == vni)
            return (int)s;
    return -1;
}

/* --- set-up and table maintenance (called from Python) ------------------------------------ */

vx_dp *vx_dp_new(uint32_t lo, uint32_t hi, int strict, int complete_checksums)
{
    vx_dp *dp = calloc(1, sizeof(vx_dp));
    if (dp == NULL)
        return NULL;
    dp->remotes = calloc(VX_MAX_REMOTES, sizeof(vx_remote));
    if (dp->remotes == NULL || resize(dp, 1024) < 0) {
        free(dp->remotes);
        free(dp);
        return NULL;
    }
    pthread_mutex_init(&dp->lock, NULL);
    for (uint32_t p = 0; p < 65536; p++)
        dp->port_fd[p] = -1;
    dp->lo = lo;
    dp->hi = hi;
    dp->strict = strict;
    dp->csum = complete_checksums;
    return dp;
}

static void sender_stop(vx_dp *dp);

void vx_dp_free(vx_dp *dp)
{
    if (dp == NULL)
        return;
    sender_stop(dp);
    pthread_mutex_destroy(&dp->lock);
    free(dp->tab);
    free(dp->remotes);
    free(dp);
}

/* Serve vni (or update it): returns the segment index, or -ENOSPC. */
int vx_dp_seg_set(vx_dp *dp, uint32_t vni, int tap_fd, uint32_t vnet, uint32_t mtu,
                  const uint8_t *local_mac, uint32_t flags)
{
    pthread_mutex_lock(&dp->lock);
    int s = seg_index(dp, vni);
    if (s < 0) {
        for (uint32_t k = 0; k < dp->nsegs; k++)
            if (!dp->segs[k].used) {
                s = (int)k;
                break;
            }
        if (s < 0 && dp->nsegs < VX_MAX_SEGS)
            s = (int)dp->nsegs++;
        if (s >= 0)
            memset(&dp->segs[s], 0, sizeof(vx_seg));
    }
    if (s >= 0) {
        vx_seg *g = &dp->segs[s];
        g->used = 1;
        g->vni = vni;
        g->tap_fd = tap_fd;
        g->vnet = vnet;
        g->mtu = mtu;
        g->flags = flags;
        g->local_mac = local_mac ? mac48(local_mac) : 0;
    }
    pthread_mutex_unlock(&dp->lock);
    return s < 0 ? -ENOSPC : s;
}

/* Stop serving vni and forget its entries. */
void vx_dp_seg_del(vx_dp *dp, uint32_t vni)
{
    pthread_mutex_lock(&dp->lock);
    int s = seg_index(dp, vni);
    if (s >= 0) {
        for (uint64_t j = 0; j < dp->cap; j++)
            if (dp->tab[j].key > VX_KEY_TOMB && (dp->tab[j].key >> 48) == (uint64_t)s + 1)
                erase(dp, &dp->tab[j]);
        dp->segs[s].used = 0;
    }
    pthread_mutex_unlock(&dp->lock);
}

int vx_dp_remote_set(vx_dp *dp, uint32_t id, const uint8_t *sa, uint32_t salen)
{
    if (id >= VX_MAX_REMOTES || salen > VX_ADDR_LEN)
        return -EINVAL;
    pthread_mutex_lock(&dp->lock);
    memset(&dp->remotes[id], 0, sizeof(vx_remote));
    memcpy(dp->remotes[id].sa, sa, salen);
    dp->remotes[id].salen = salen;
    pthread_mutex_unlock(&dp->lock);
    return 0;
}

static void sender_drain(vx_dp *dp);

/* The send socket bound to source port `port` (-1: none; frames of that flow go up). Waits
 * for the sender thread's queued jobs first: they may use the socket that is going away. */
void vx_dp_port_fd(vx_dp *dp, uint32_t port, int fd)
{
    sender_drain(dp);
    if (port < 65536)
        __atomic_store_n(&dp->port_fd[port], fd, __ATOMIC_RELEASE);
}

/* Set the entry (vni, mac): remote id or VX_REMOTE_NONE, VX_F_* flags, last seen (ms). */
int vx_dp_put(vx_dp *dp, uint32_t vni, const uint8_t *mac, uint32_t remote, uint32_t flags,
              uint64_t seen_ms)
{
    int rc = -ENOENT;
    pthread_mutex_lock(&dp->lock);
    int s = seg_index(dp, vni);
    if (s >= 0 && (remote == VX_REMOTE_NONE || remote < VX_MAX_REMOTES)) {
        vx_entry *e = insert(dp, key_of((uint32_t)s, mac48(mac)));
        rc = -ENOMEM;
        if (e != NULL) {
            e->remote = remote;
            e->flags = flags;
            e->seen_ms = seen_ms;
            rc = 0;
        }
    }
    pthread_mutex_unlock(&dp->lock);
    return rc;
}

int vx_dp_del(vx_dp *dp, uint32_t vni, const uint8_t *mac)
{
    int rc = 0;
    pthread_mutex_lock(&dp->lock);
    int s = seg_index(dp, vni);
    vx_entry *e = s < 0 ? NULL : find(dp, key_of((uint32_t)s, mac48(mac)));
    if (e != NULL) {
        erase(dp, e);
        rc = 1;
    }
    pthread_mutex_unlock(&dp->lock);
    return rc;
}

/* 1 and the entry's fields if (vni, mac) is cached, else 0. */
int vx_dp_get(vx_dp *dp, uint32_t vni, const uint8_t *mac, uint32_t *remote, uint32_t *flags,
              uint64_t *seen_ms)
{
    int rc = 0;
    pthread_mutex_lock(&dp->lock);
    int s = seg_index(dp, vni);
    vx_entry *e = s < 0 ? NULL : find(dp, key_of((uint32_t)s, mac48(mac)));
    if (e != NULL) {
        *remote = e->remote;
        *flags = e->flags;
        *seen_ms = e->seen_ms;
        rc = 1;
    }
    pthread_mutex_unlock(&dp->lock);
    return rc;
}

/* Copy up to cap entries of vni (MACs as 6 bytes each); returns how many vni has in all. */
uint32_t vx_dp_dump(vx_dp *dp, uint32_t vni, uint8_t *macs, uint32_t *remote, uint32_t *flags,
                    uint64_t *seen_ms, uint32_t cap)
{
    uint32_t n = 0;
    pthread_mutex_lock(&dp->lock);
    int s = seg_index(dp, vni);
    for (uint64_t j = 0; s >= 0 && j < dp->cap; j++) {
        vx_entry *e = &dp->tab[j];
        if (e->key <= VX_KEY_TOMB || (e->key >> 48) != (uint64_t)s + 1)
            continue;
        if (n < cap) {
            for (int b = 0; b < 6; b++)
                macs[n * 6 + b] = (uint8_t)(e->key >> (40 - 8 * b));
            remote[n] = e->remote;
            flags[n] = e->flags;
            seen_ms[n] = e->seen_ms;
        }
        n++;
    }
    pthread_mutex_unlock(&dp->lock);
    return n;
}

/* Per-VNI counters of the fast path (VX_NCOUNTERS of them); 0 if vni is not served. */
int vx_dp_counters(vx_dp *dp, uint32_t vni, uint64_t *out)
{
    pthread_mutex_lock(&dp->lock);
    int s = seg_index(dp, vni);
    if (s >= 0)
        memcpy(out, dp->segs[s].c, sizeof(dp->segs[s].c));
    pthread_mutex_unlock(&dp->lock);
    return s >= 0;
}

/* Datapath-wide counters: truncated datagrams, checksums completed, send errors by errno, and
 * the UDP GRO counters of the receive pump (gro[0..3]: receives holding several datagrams, of
 * them coalesced into one super-frame, of them split into their datagrams, receives dropped
 * because the pump was handed another batch while they waited in the first). */
void vx_dp_global(vx_dp *dp, uint64_t *truncated, uint64_t *checksums, uint64_t *send_err,
                  uint64_t *gro)
{
    pthread_mutex_lock(&dp->lock);
    *truncated = dp->truncated;
    *checksums = dp->checksums;
    memcpy(send_err, dp->send_err, sizeof(dp->send_err));
    memcpy(gro, dp->gro, sizeof(dp->gro));
    pthread_mutex_unlock(&dp->lock);
}

/* --- classification (no I/O: the tests drive these directly) ------------------------------ */

static int is_vlan(const uint8_t *f)
{
    uint32_t et = ((uint32_t)f[12] << 8) | f[13];
    return et == 0x8100 || et == 0x88A8;
}

/*
 * Device -> wire, slots first..first+n-1 read from the device of vni: action[i] = remote id
 * for a hit (encapsulated in place: header, payload_len, sport), VX_ACT_UPCALL otherwise.
 * Returns the number of hits (-ENOENT if vni is not served).
 */
int vx_dp_tx_classify(vx_dp *dp, uint32_t vni, vx_batch *b, uint32_t first, uint32_t n)
{
    int hits = 0;
    pthread_mutex_lock(&dp->lock);
    int s = seg_index(dp, vni);
    if (s < 0) {
        pthread_mutex_unlock(&dp->lock);
        return -ENOENT;
    }
    vx_seg *g = &dp->segs[s];
    for (uint32_t i = first; i < first + n; i++) {
        const uint8_t *f = b->buf + (size_t)i * b->slot + b->headroom;
        uint32_t len = b->frame_len[i];
        b->action[i] = VX_ACT_UPCALL;
        if (len < VX_ETH_HLEN || len > b->slot - b->headroom || (f[0] & 1))
            continue;
        if (is_vlan(f) && !(g->flags & VX_SEG_VLAN))
            continue;
        if (f[12] == 0x08 && f[13] == 0x06 && (g->flags & VX_SEG_PROXY))
            continue;
        vx_entry *e = find(dp, key_of((uint32_t)s, mac48(f)));
        if (e == NULL || e->remote == VX_REMOTE_NONE)
            continue;
        b->action[i] = (int32_t)e->remote;
        b->vni[i] = vni;
        hits++;
    }
    pthread_mutex_unlock(&dp->lock);
    for (uint32_t i = first; i < first + n; i++) /* encapsulate the hits, outside the lock */
        if (b->action[i] >= 0)
            vx_encap_batch(b->buf + (size_t)i * b->slot, b->slot, b->headroom, 1,
                           &b->frame_len[i], &b->vni[i], &b->payload_len[i], &b->sport[i],
                           dp->lo, dp->hi);
    return hits;
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

/* Decapsulate received payloads in slots first..first+n-1 and complete partial inner checksums;
 * with pumped set, not in slots whose vnet_flags say the pump has verified them (coalesced). */
static void rx_decap(vx_dp *dp, vx_batch *b, uint32_t first, uint32_t n, int pumped)
{
    uint8_t *base = b->buf + (size_t)first * b->slot;
    vx_decap_batch(base, b->slot, b->headroom, n, b->payload_len + first, dp->strict,
                   b->vni + first, b->status + first, b->frame_len + first);
    if (!dp->csum)
        return;
    uint32_t fixed = 0, end = first + n, i = first;
    while (i < end) {
        uint32_t j = i;
        while (j < end && !(pumped && b->vnet_flags[j] == VX_RX_VERIFIED))
            j++;
        fixed += vx_complete_checksums(b->buf + (size_t)i * b->slot, b->slot, b->headroom, j - i,
                                       b->frame_len + i);
        for (i = j; i < end && pumped && b->vnet_flags[i] == VX_RX_VERIFIED; i++)
            ;
    }
    __atomic_fetch_add(&dp->checksums, fixed, __ATOMIC_RELAXED);
}

/* Set action[i] for the decapsulated slots order[0..n), taken in that order (wire order); see
 * vx_dp_rx_classify. Returns hits. */
static int rx_decide(vx_dp *dp, vx_batch *b, const uint32_t *order, uint32_t n, uint64_t now_ms)
{
    int hits = 0;
    /* Source MACs sent up in this batch: Python may learn or move them, so their later frames
     * go up too (the engine sees each MAC's frames in order, as without the cache). */
    uint64_t up[64];
    uint32_t nup = 0;
    pthread_mutex_lock(&dp->lock);
    int last_vni = -1, s = -1;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t i = order[k];
        b->action[i] = VX_ACT_UPCALL;
        if (b->payload_len[i] == VX_TRUNCATED) {
            b->action[i] = VX_ACT_DROP;
            dp->truncated++;
            continue;
        }
        if (b->status[i] != 0)
            continue;
        if ((int)b->vni[i] != last_vni) {
            last_vni = (int)b->vni[i];
            s = seg_index(dp, b->vni[i]);
        }
        if (s < 0)
            continue;
        vx_seg *g = &dp->segs[s];
        const uint8_t *f = b->buf + (size_t)i * b->slot + b->headroom;
        uint64_t smac = mac48(f + 6);
        if ((f[6] & 1) || smac == 0 || smac == g->local_mac)
            continue;
        if (is_vlan(f) && !(g->flags & VX_SEG_VLAN))
            continue;
        uint64_t key = key_of((uint32_t)s, smac);
        int earlier = 0;
        for (uint32_t k = 0; k < nup && !earlier; k++)
            earlier = up[k] == key;
        if (earlier || nup == 64)
            continue;
        vx_entry *e = find(dp, key);
        if (e != NULL) {
            if (e->remote == VX_REMOTE_NONE ||
                !same_ip(dp->remotes[e->remote].sa, b->addrs + (size_t)i * VX_ADDR_LEN)) {
                up[nup++] = key; /* a move, a spoof, or several remotes: Python decides */
                continue;
            }
            if ((e->flags & VX_F_LEARNED) && (g->flags & VX_SEG_LEARNING))
                e->seen_ms = now_ms;
        } else if (g->flags & VX_SEG_LEARNING) {
            up[nup++] = key; /* a MAC to learn */
            continue;
        }
        b->action[i] = s;
        g->c[0]++;
        g->c[1] += b->frame_len[i];
        hits++;
    }
    pthread_mutex_unlock(&dp->lock);
    return hits;
}

/*
 * Wire -> device, received payloads in slots first..first+n-1 (sources in addrs): decapsulate,
 * complete partial inner checksums, then action[i] = segment index for a frame delivered by the
 * fast path, VX_ACT_UPCALL or VX_ACT_DROP (a datagram too large for its slot); order[i] = i.
 * Returns hits.
 */
int vx_dp_rx_classify(vx_dp *dp, vx_batch *b, uint32_t first, uint32_t n, uint64_t now_ms)
{
    if (first > b->capacity || n > b->capacity - first)
        return 0;
    rx_decap(dp, b, first, n, 0);
    for (uint32_t i = first; i < first + n; i++)
        b->order[i] = i;
    return rx_decide(dp, b, b->order + first, n, now_ms);
}

/* --- pumps: I/O + classification, one Python crossing per batch ---------------------------- */

static void count_send(vx_dp *dp, int r, uint32_t n)
{
    if (r >= 0 && (uint32_t)r >= n)
        return;
    pthread_mutex_lock(&dp->lock);
    if (r < 0)
        dp->send_err[-r < 256 ? -r : 255] += n;
    else
        dp->send_err[EAGAIN] += n - (uint32_t)r; /* the socket buffer was full */
    pthread_mutex_unlock(&dp->lock);
}

static int gone(int e)
{
    return e == EBADFD || e == EIO || e == ENODEV || e == ENXIO || e == EBADF;
}

/* Read frames from a TAP into slots 0.. until EAGAIN or full; returns the count or -errno. */
static int tap_read(int fd, uint32_t vnet, vx_batch *b)
{
    uint32_t i = 0;
    while (i < b->capacity) {
        uint8_t *p = b->buf + (size_t)i * b->slot + b->headroom - vnet;
        ssize_t r = read(fd, p, b->max_frame + vnet);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            if (gone(errno))
                return -errno;
            break; /* anything else: try again on the next readiness */
        }
        if ((uint32_t)r <= vnet)
            break;
        b->vnet_flags[i] = b->gso_type[i] = 0;
        b->gso_size[i] = 0;
        if (vnet) {
            uint16_t gso_size;
            memcpy(&gso_size, p + 4, 2);
            b->vnet_flags[i] = p[0];
            b->gso_type[i] = p[1];
            b->gso_size[i] = gso_size;
        }
        b->frame_len[i] = (uint32_t)r - vnet;
        i++;
    }
    return (int)i;
}

/*
 * Send datagrams first..first+cnt-1 of b to r from socket fd: one UDP GSO send when there are
 * several (the kernel builds one skb for them), else sendmmsg. If the route cannot take GSO
 * (datagrams past the device MTU that must be fragmented, no UDP_SEGMENT), this run and later
 * ones go by sendmmsg.
 */
static void send_run(vx_dp *dp, int fd, const vx_batch *b, uint32_t first, uint32_t cnt,
                     const vx_remote *r)
{
    if (cnt > 1 && !__atomic_load_n(&dp->no_gso, __ATOMIC_RELAXED)) {
        int rc = vx_send_gso(fd, b->buf, b->slot, b->headroom, first, cnt, b->payload_len, r->sa,
                             r->salen);
        if (rc != -EMSGSIZE && rc != -EINVAL && rc != -EIO && rc != -ENOPROTOOPT) {
            count_send(dp, rc, cnt);
            return;
        }
        if (rc != -EMSGSIZE)
            __atomic_store_n(&dp->no_gso, 1, __ATOMIC_RELAXED);
    }
    count_send(dp,
               vx_send_batch(fd, b->buf, b->slot, b->headroom, first, cnt, b->payload_len, r->sa,
                             r->salen),
               cnt);
}

/* Cut the TCP super-frame in slot i of b into segments in sb and encapsulate them; returns
 * their count and sets *fd to the flow's send socket, or 0 (slot i marked for Python). */
static uint32_t cut_super(vx_dp *dp, const vx_seg *g, vx_batch *b, uint32_t i, vx_batch *sb,
                          int *fd)
{
    const uint8_t *f = b->buf + (size_t)i * b->slot + b->headroom;
    uint32_t k = vx_tso_segment(f, b->frame_len[i], b->gso_size[i], g->vni, sb->buf, sb->slot,
                                sb->headroom, sb->max_frame, 0, sb->capacity, sb->frame_len,
                                sb->vni);
    if (k == 0) {
        b->action[i] = VX_ACT_UPCALL; /* Python counts it as a GSO error */
        return 0;
    }
    vx_encap_batch(sb->buf, sb->slot, sb->headroom, k, sb->frame_len, sb->vni, sb->payload_len,
                   sb->sport, dp->lo, dp->hi);
    *fd = __atomic_load_n(&dp->port_fd[sb->sport[0]], __ATOMIC_ACQUIRE);
    if (*fd < 0) {
        b->action[i] = VX_ACT_UPCALL; /* no socket on that source port yet */
        return 0;
    }
    return k;
}

static void *sender_main(void *arg)
{
    vx_dp *dp = arg;
    vx_sender *t = dp->sender;
    pthread_setname_np(pthread_self(), "vxlanpy-send");
    pthread_mutex_lock(&t->lock);
    for (;;) {
        while (t->head == t->tail && !t->stop)
            pthread_cond_wait(&t->work, &t->lock);
        if (t->head == t->tail)
            break; /* stopped and drained */
        vx_job *j = &t->jobs[t->tail % VX_JOBS];
        pthread_mutex_unlock(&t->lock);
        send_run(dp, j->fd, &j->b, 0, j->n, &j->r);
        pthread_mutex_lock(&t->lock);
        __atomic_store_n(&t->tail, t->tail + 1, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&t->done);
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

/* Wait until the sender thread has sent every queued job. */
static void sender_drain(vx_dp *dp)
{
    vx_sender *t = dp->sender;
    if (t == NULL || __atomic_load_n(&t->head, __ATOMIC_ACQUIRE) ==
                         __atomic_load_n(&t->tail, __ATOMIC_ACQUIRE))
        return;
    pthread_mutex_lock(&t->lock);
    while (t->head != t->tail)
        pthread_cond_wait(&t->done, &t->lock);
    pthread_mutex_unlock(&t->lock);
}

/* The job the pump fills next (waits while all are queued). */
static vx_job *sender_claim(vx_sender *t)
{
    pthread_mutex_lock(&t->lock);
    while (t->head - t->tail >= VX_JOBS)
        pthread_cond_wait(&t->done, &t->lock);
    vx_job *j = &t->jobs[t->head % VX_JOBS];
    pthread_mutex_unlock(&t->lock);
    return j;
}

static void sender_push(vx_sender *t)
{
    pthread_mutex_lock(&t->lock);
    __atomic_store_n(&t->head, t->head + 1, __ATOMIC_RELEASE);
    pthread_cond_signal(&t->work);
    pthread_mutex_unlock(&t->lock);
}

static void job_free(vx_job *j)
{
    free(j->b.buf);
    free(j->b.frame_len);
    free(j->b.payload_len);
    free(j->b.vni);
    free(j->b.sport);
}

static void sender_free(vx_sender *t)
{
    for (int k = 0; k < VX_JOBS; k++)
        job_free(&t->jobs[k]);
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->work);
    pthread_cond_destroy(&t->done);
    free(t);
}

static void sender_stop(vx_dp *dp)
{
    vx_sender *t = dp->sender;
    if (t == NULL)
        return;
    pthread_mutex_lock(&t->lock);
    t->stop = 1;
    pthread_cond_signal(&t->work);
    pthread_mutex_unlock(&t->lock);
    pthread_join(t->thread, NULL);
    dp->sender = NULL;
    sender_free(t);
}

/*
 * Start the sender thread; its jobs hold `capacity` segments of the geometry of a batch with
 * this slot, headroom and max_frame (the pump's segment batch). Returns 0 (also if it runs
 * already) or -errno. Call it before pumping, from the thread that pumps.
 */
int vx_dp_sender_start(vx_dp *dp, uint32_t slot, uint32_t headroom, uint32_t max_frame,
                       uint32_t capacity)
{
    if (dp->sender != NULL)
        return 0;
    if (capacity == 0 || capacity > VX_MAX_SEGS || headroom + max_frame > slot)
        return -EINVAL;
    vx_sender *t = calloc(1, sizeof(vx_sender));
    if (t == NULL)
        return -ENOMEM;
    int bad = 0;
    for (int k = 0; k < VX_JOBS; k++) {
        vx_batch *b = &t->jobs[k].b;
        b->slot = slot;
        b->headroom = headroom;
        b->max_frame = max_frame;
        b->capacity = capacity;
        b->buf = malloc((size_t)slot * capacity);
        b->frame_len = calloc(capacity, sizeof(uint32_t));
        b->payload_len = calloc(capacity, sizeof(uint32_t));
        b->vni = calloc(capacity, sizeof(uint32_t));
        b->sport = calloc(capacity, sizeof(uint16_t));
        bad |= !b->buf || !b->frame_len || !b->payload_len || !b->vni || !b->sport;
    }
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->work, NULL);
    pthread_cond_init(&t->done, NULL);
    if (bad) {
        sender_free(t);
        return -ENOMEM;
    }
    dp->sender = t;
    /* signals stay with the threads that expect them: a handler run here would cut sends
     * short (EINTR) and Python's own handling does not need this thread */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&t->thread, NULL, sender_main, dp);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        dp->sender = NULL;
        sender_free(t);
        return -rc;
    }
    return 0;
}

/* Super-frames the sender thread has sent, or -1 if there is no sender thread. */
int64_t vx_dp_sender_sent(vx_dp *dp)
{
    vx_sender *t = dp->sender;
    return t == NULL ? -1 : (int64_t)__atomic_load_n(&t->tail, __ATOMIC_ACQUIRE);
}

/* Cut the super-frame in slot i and send it: queued for the sender thread if there is one,
 * else from here through sb. Returns 0, or -1 if slot i went up instead. */
static int forward_super(vx_dp *dp, const vx_seg *g, vx_batch *b, uint32_t i, vx_batch *sb,
                         const vx_remote *r)
{
    int fd = -1;
    vx_sender *t = dp->sender;
    if (t == NULL) {
        uint32_t k = cut_super(dp, g, b, i, sb, &fd);
        if (k == 0)
            return -1;
        send_run(dp, fd, sb, 0, k, r);
        return 0;
    }
    vx_job *j = sender_claim(t);
    uint32_t k = cut_super(dp, g, b, i, &j->b, &fd);
    if (k == 0)
        return -1; /* the job stays unqueued; the next super-frame fills it */
    j->n = k;
    j->fd = fd;
    j->r = *r;
    sender_push(t);
    return 0;
}

/*
 * Device -> wire for the TAP of vni: read a batch, complete partial checksums, classify, send
 * the hits (runs of one remote and source port in one sendmmsg, super-frames cut and sent as
 * UDP GSO). Repeats up to `rounds` batches while nothing needs Python. Returns frames read in
 * the last batch (its upcall slots have action VX_ACT_UPCALL; *upcalls says how many), 0 when
 * the TAP is drained, or -errno if it is gone.
 */
int vx_dp_tx_pump(vx_dp *dp, uint32_t vni, vx_batch *b, vx_batch *sb, uint32_t rounds,
                  uint32_t *upcalls)
{
    *upcalls = 0;
    pthread_mutex_lock(&dp->lock);
    int s = seg_index(dp, vni);
    pthread_mutex_unlock(&dp->lock);
    if (s < 0)
        return -ENOENT;
    vx_seg *g = &dp->segs[s];
    int n = 0;
    for (uint32_t round = 0; round < rounds; round++) {
        n = tap_read(g->tap_fd, g->vnet, b);
        if (n <= 0)
            return n;
        for (int i = 0; i < n; i++)
            if ((b->vnet_flags[i] & 1) && !b->gso_type[i]) /* NEEDS_CSUM, not a super-frame */
                __atomic_fetch_add(&dp->checksums,
                                   vx_complete_checksums(b->buf + (size_t)i * b->slot, b->slot,
                                                         b->headroom, 1, &b->frame_len[i]),
                                   __ATOMIC_RELAXED);
        if (vx_dp_tx_classify(dp, vni, b, 0, (uint32_t)n) < 0)
            return -ENOENT;
        uint64_t pk = 0, by = 0, gso = 0;
        int i = 0;
        while (i < n) {
            int32_t a = b->action[i];
            if (a < 0) {
                (*upcalls)++;
                i++;
                continue;
            }
            const vx_remote *r = &dp->remotes[a];
            if (b->gso_type[i] & 0x7F) {
                if (forward_super(dp, g, b, (uint32_t)i, sb, r) == 0) {
                    gso++;
                    pk++;
                    by += b->frame_len[i];
                } else {
                    (*upcalls)++;
                }
                i++;
                continue;
            }
            int j = i + 1;
            while (j < n && b->action[j] == a && b->sport[j] == b->sport[i] &&
                   !(b->gso_type[j] & 0x7F))
                j++;
            int fd = __atomic_load_n(&dp->port_fd[b->sport[i]], __ATOMIC_ACQUIRE);
            if (fd < 0) {
                for (int k = i; k < j; k++)
                    b->action[k] = VX_ACT_UPCALL;
                *upcalls += (uint32_t)(j - i);
                i = j;
                continue;
            }
            /* these must not overtake super-frames of their flow queued for the sender */
            sender_drain(dp);
            /* one flow to one remote: runs of equal-sized datagrams (and a shorter last one)
             * leave as one UDP GSO send; the rest one by one */
            while (i < j) {
                int k = i + 1;
                while (k < j && b->payload_len[k] == b->payload_len[i])
                    k++;
                if (k < j && b->payload_len[k] < b->payload_len[i])
                    k++;
                send_run(dp, fd, b, (uint32_t)i, (uint32_t)(k - i), r);
                for (int m = i; m < k; m++) {
                    pk++;
                    by += b->frame_len[m];
                }
                i = k;
            }
        }
        pthread_mutex_lock(&dp->lock);
        g->c[2] += pk;
        g->c[3] += by;
        g->c[5] += gso;
        pthread_mutex_unlock(&dp->lock);
        if (*upcalls) {
            sender_drain(dp); /* what Python sends next must not overtake the queue */
            return n;
        }
        if ((uint32_t)n < b->capacity)
            return n;
    }
    return n;
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
    uint8_t *p = b->buf + (size_t)m * b->slot + b->headroom - VX_HLEN;
    b->vnet_flags[m] = 0;
    if (len == VX_TRUNCATED || g == 0 || len <= g) {
        b->order[(*nout)++] = m;
        return 0;
    }
    uint32_t nseg = (len - 1) / g + 1;
    if (nseg - 1 > b->capacity - area) {
        b->payload_len[m] = VX_TRUNCATED;
        b->order[(*nout)++] = m;
        return 0;
    }
    if (*next + nseg - 1 > b->capacity)
        return -1;
    pthread_mutex_lock(&dp->lock);
    int s = len >= VX_HLEN ? seg_index(dp, ((uint32_t)p[4] << 16) | ((uint32_t)p[5] << 8) | p[6])
                           : -1;
    int gso_tap = s >= 0 && dp->segs[s].vnet && dp->segs[s].mtu;
    dp->gro[0]++;
    pthread_mutex_unlock(&dp->lock);
    b->order[(*nout)++] = m;
    uint32_t c = gso_tap ? vx_gro_coalesce(p, len, g) : 0;
    if (c) {
        b->payload_len[m] = c;
        b->vnet_flags[m] = VX_RX_VERIFIED; /* its checksums are checked and rewritten */
        __atomic_fetch_add(&dp->gro[1], 1, __ATOMIC_RELAXED);
        return 0;
    }
    for (uint32_t t = 1; t < nseg; t++) {
        uint32_t d = (*next)++;
        uint32_t plen = t + 1 < nseg ? g : len - t * g;
        memcpy(b->buf + (size_t)d * b->slot + b->headroom - VX_HLEN, p + (size_t)t * g, plen);
        memcpy(b->addrs + (size_t)d * VX_ADDR_LEN, b->addrs + (size_t)m * VX_ADDR_LEN,
               VX_ADDR_LEN);
        b->payload_len[d] = plen;
        b->gso_size[d] = 0;
        b->vnet_flags[d] = 0;
        b->order[(*nout)++] = d;
    }
    b->payload_len[m] = g;
    __atomic_fetch_add(&dp->gro[2], 1, __ATOMIC_RELAXED);
    return 0;
}

/* Write the frames that order[0..n) says the fast path delivers, one C loop per segment
 * (usually there is one), in wire order. Counts the upcalls in *upcalls. Returns 0, or -errno
 * with *gone_vni set when a TAP is gone. */
static int rx_write(vx_dp *dp, vx_batch *b, uint32_t n, uint32_t *upcalls, int64_t *gone_vni)
{
    uint32_t slots[VX_MAX_BATCH];
    uint8_t written[VX_MAX_BATCH];
    memset(written, 0, b->capacity);
    for (uint32_t first = 0; first < n; first++) {
        int32_t s = b->action[b->order[first]];
        if (s == VX_ACT_UPCALL)
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
        vx_seg *g = &dp->segs[s];
        uint32_t errs = 0;
        int w = vx_tap_write(g->tap_fd, b->buf, b->slot, b->headroom, slots, k, b->frame_len,
                             g->vnet, g->mtu, &errs);
        if (errs) {
            pthread_mutex_lock(&dp->lock);
            g->c[4] += errs;
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
 * `rounds` receives while nothing needs Python. Returns datagrams in the last batch, listed in
 * order[0..n) (upcall slots marked, out[0] of them), 0 when the socket is drained, or -errno:
 * a socket error (ICMP report; *gone_vni = -1) or a TAP gone (*gone_vni = its VNI).
 * out[1]: 0 the socket is drained; 1 it may hold more; 2 received datagrams still wait in the
 * batch (a split that did not fit): call again, with the same batch, before anything else.
 */
int vx_dp_rx_pump(vx_dp *dp, int fd, vx_batch *b, uint64_t now_ms, uint32_t rounds,
                  uint32_t spill, uint32_t *out, int64_t *gone_vni)
{
    out[0] = out[1] = 0;
    *gone_vni = -1;
    if (b->capacity > VX_MAX_BATCH || spill >= b->capacity)
        return -EINVAL;
    uint32_t area = b->capacity - spill, received = 0;
    if (dp->pend_hi > dp->pend_lo && dp->pend_buf != b->buf) {
        __atomic_fetch_add(&dp->gro[3], dp->pend_hi - dp->pend_lo, __ATOMIC_RELAXED);
        dp->pend_lo = dp->pend_hi = 0;
    }
    for (;;) {
        uint32_t lo = dp->pend_lo, hi = dp->pend_hi, full = dp->pend_full;
        dp->pend_lo = dp->pend_hi = 0;
        if (hi == lo) {
            if (received++ == rounds) {
                out[1] = 1;
                return 0;
            }
            uint32_t trunc = 0;
            int n = 0;
            while ((uint32_t)n < area) {
                int r = vx_recv_batch(fd, b->buf, b->slot, b->headroom, (uint32_t)n, area,
                                      b->max_frame + VX_HLEN, b->payload_len, b->addrs,
                                      b->gso_size, &trunc);
                if (r < 0) {
                    if (n == 0)
                        return r;
                    break;
                }
                if (r == 0)
                    break;
                n += r;
            }
            if (n == 0) {
                out[1] = 0;
                return 0;
            }
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
        rx_decap(dp, b, lo, m - lo, 1);
        rx_decap(dp, b, area, next - area, 1);
        rx_decide(dp, b, b->order, nout, now_ms);
        int w = rx_write(dp, b, nout, &out[0], gone_vni);
        if (w < 0)
            return w;
        out[1] = m < hi ? 2 : full;
        if (out[0] || out[1] == 0)
            return (int)nout;
    }
}

/*
 * Busy polling: wait for one of fds[0..n) to become readable by polling without sleeping, for
 * at most usec microseconds (sched_yield between polls lets other runnable tasks on this CPU
 * go first). Returns 1 if one is readable, 0 on timeout, -errno on error. Sleeping in epoll
 * costs a wake-up (tens of microseconds on a VM) on the next packet; this trades CPU for it.
 */
int vx_dp_spin(const int *fds, uint32_t n, uint32_t usec)
{
    struct pollfd p[16];
    struct timespec t0, t;
    if (n == 0 || n > 16)
        return -EINVAL;
    for (uint32_t k = 0; k < n; k++) {
        p[k].fd = fds[k];
        p[k].events = POLLIN;
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int r = poll(p, n, 0);
        if (r != 0)
            return r > 0 ? 1 : -errno;
        clock_gettime(CLOCK_MONOTONIC, &t);
        int64_t us = (int64_t)(t.tv_sec - t0.tv_sec) * 1000000 + (t.tv_nsec - t0.tv_nsec) / 1000;
        if (us >= (int64_t)usec)
            return 0;
        sched_yield();
    }
}
