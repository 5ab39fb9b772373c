/*
 * The datapath's tables, as the engine installs them (datapath.py): segments with their rule
 * and device, remotes (sockaddrs), actions (lists of remote + VNI), and the flow table of
 * (segment, MAC) entries pointing at actions, with what each entry lets C do. An open-addressing
 * hash table with linear probing and tombstones; one mutex guards it all (cffi releases the
 * GIL around each call; vxlanpy calls from its event loop's thread and the sender thread only
 * touches counters).
 */
#include <stdlib.h>
#include <sys/socket.h>

#include "vx_internal.h"

/* The slot a key hashes to: both halves of the 64-bit key through the 32-bit finaliser. */
static uint64_t mix64(uint64_t k)
{
    return ((uint64_t)vx_fmix32((uint32_t)(k >> 32) ^ 0x9E3779B9u) << 32)
           ^ vx_fmix32((uint32_t)k ^ (uint32_t)(k >> 32));
}

static uint64_t key_of(uint32_t seg, const uint8_t *mac)
{
    return ((uint64_t)(seg + 1) << 48) | vx_mac48(mac);
}

static vx_entry *find_key(const vx_dp *dp, uint64_t key)
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

/* The entry of mac in segment index seg, or NULL. Call with dp->lock held. */
vx_entry *vx_find(const vx_dp *dp, uint32_t seg, const uint8_t *mac)
{
    return find_key(dp, key_of(seg, mac));
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
    vx_entry *e = find_key(dp, key);
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

/* The index of the segment serving vni, or -1. Call with dp->lock held. */
int vx_seg_index(const vx_dp *dp, uint32_t vni)
{
    for (uint32_t s = 0; s < dp->nsegs; s++)
        if (dp->segs[s].used && dp->segs[s].vni == vni)
            return (int)s;
    return -1;
}

/* Room for capacity slots of headroom 64 + max_frame and their columns; 0 or -ENOMEM. */
int vx_batch_alloc(vx_batch *b, uint32_t capacity, uint32_t max_frame)
{
    memset(b, 0, sizeof(*b));
    b->headroom = 64;
    b->max_frame = max_frame;
    b->slot = (b->headroom + max_frame + 63) & ~63u;
    b->capacity = capacity;
    b->buf = malloc((size_t)b->slot * capacity);
    b->frame_len = calloc(capacity, sizeof(uint32_t));
    b->payload_len = calloc(capacity, sizeof(uint32_t));
    b->vni = calloc(capacity, sizeof(uint32_t));
    b->sport = calloc(capacity, sizeof(uint16_t));
    b->tos = calloc(capacity, 1);
    b->ttl = calloc(capacity, 1);
    b->df = calloc(capacity, 1);
    if (!b->buf || !b->frame_len || !b->payload_len || !b->vni || !b->sport || !b->tos || !b->ttl
        || !b->df) {
        vx_batch_release(b);
        return -ENOMEM;
    }
    return 0;
}

void vx_batch_release(vx_batch *b)
{
    free(b->buf);
    free(b->frame_len);
    free(b->payload_len);
    free(b->vni);
    free(b->sport);
    free(b->tos);
    free(b->ttl);
    free(b->df);
    memset(b, 0, sizeof(*b));
}

/* --- set-up ----------------------------------------------------------------------------- */

/* A datapath whose super-frame chunks are at most chunk_max_frame bytes (the largest device
 * MTU + 18), or NULL. */
vx_dp *vx_dp_new(uint32_t chunk_max_frame)
{
    vx_dp *dp = calloc(1, sizeof(vx_dp));
    if (dp == NULL)
        return NULL;
    dp->remotes = calloc(VX_MAX_REMOTES, sizeof(vx_remote));
    dp->actions = calloc(VX_MAX_ACTIONS, sizeof(vx_action));
    if (dp->remotes == NULL || dp->actions == NULL || resize(dp, 1024) < 0
        || vx_batch_alloc(&dp->scratch, VX_MAX_CHUNKS, chunk_max_frame) < 0) {
        free(dp->tab);
        free(dp->remotes);
        free(dp->actions);
        free(dp);
        return NULL;
    }
    pthread_mutex_init(&dp->lock, NULL);
    for (uint32_t p = 0; p < 65536; p++)
        dp->port_fd[0][p] = dp->port_fd[1][p] = -1;
    dp->chunk_max_frame = chunk_max_frame;
    dp->cfg.srcport_lo = 49152;
    dp->cfg.srcport_hi = 65535;
    dp->cfg.complete_checksums = 1;
    dp->cfg.outer.ecn_decap = 1;
    dp->link_fd = -1;
    dp->link_ttl = 64;
    return dp;
}

void vx_dp_free(vx_dp *dp)
{
    if (dp == NULL)
        return;
    vx_loop_stop(dp);
    vx_sender_stop(dp);
    pthread_mutex_destroy(&dp->lock);
    vx_batch_release(&dp->scratch);
    free(dp->tab);
    free(dp->remotes);
    free(dp->actions);
    free(dp);
}

void vx_dp_configure(vx_dp *dp, const vx_config *cfg)
{
    VX_EXCLUSIVE(dp);
    pthread_mutex_lock(&dp->lock);
    dp->cfg = *cfg;
    if (dp->cfg.srcport_lo > dp->cfg.srcport_hi || dp->cfg.srcport_hi > 65535)
        dp->cfg.srcport_lo = dp->cfg.srcport_hi = 0;
    pthread_mutex_unlock(&dp->lock);
}

/* Serve vni with this rule (or replace its rule): the segment index, or -ENOSPC. */
int vx_dp_segment(vx_dp *dp, uint32_t vni, const vx_rule *rule)
{
    VX_EXCLUSIVE(dp);
    pthread_mutex_lock(&dp->lock);
    int s = vx_seg_index(dp, vni);
    if (s < 0) {
        for (uint32_t k = 0; k < dp->nsegs && s < 0; k++)
            if (!dp->segs[k].used)
                s = (int)k;
        if (s < 0 && dp->nsegs < VX_MAX_SEGMENTS)
            s = (int)dp->nsegs++;
        if (s >= 0) {
            memset(&dp->segs[s], 0, sizeof(vx_segment));
            dp->segs[s].tap_fd = -1;
            dp->segs[s].vni = vni;
            dp->segs[s].used = 1;
        }
    }
    if (s >= 0)
        dp->segs[s].rule = *rule;
    pthread_mutex_unlock(&dp->lock);
    return s < 0 ? -ENOSPC : s;
}

/* The TAP of vni (served already), where the pumps read and write its frames: 0 or -ENOENT. */
int vx_dp_device(vx_dp *dp, uint32_t vni, int tap_fd, uint32_t vnet, uint32_t mtu)
{
    VX_EXCLUSIVE(dp);
    pthread_mutex_lock(&dp->lock);
    int s = vx_seg_index(dp, vni);
    if (s >= 0) {
        dp->segs[s].tap_fd = tap_fd;
        dp->segs[s].vnet = vnet;
        dp->segs[s].mtu = mtu;
    }
    pthread_mutex_unlock(&dp->lock);
    return s < 0 ? -ENOENT : 0;
}

/* Stop serving vni and forget its entries (the caller releases their actions first). */
void vx_dp_segment_del(vx_dp *dp, uint32_t vni)
{
    VX_EXCLUSIVE(dp);
    vx_sender_drain(dp); /* queued jobs count into the segment */
    pthread_mutex_lock(&dp->lock);
    int s = vx_seg_index(dp, vni);
    if (s >= 0) {
        for (uint64_t j = 0; j < dp->cap; j++)
            if (dp->tab[j].key > VX_KEY_TOMB && (dp->tab[j].key >> 48) == (uint64_t)s + 1)
                erase(dp, &dp->tab[j]);
        dp->segs[s].used = 0;
    }
    pthread_mutex_unlock(&dp->lock);
}

/* The allowlist of vni (served already): the sources its rule's VX_FROM_ALLOWED admits. */
int vx_dp_allow(vx_dp *dp, uint32_t vni, uint32_t n, const vx_prefix *prefixes)
{
    VX_EXCLUSIVE(dp);
    if (n > VX_ALLOW_PREFIXES)
        return -EINVAL;
    pthread_mutex_lock(&dp->lock);
    int s = vx_seg_index(dp, vni);
    if (s >= 0) {
        memcpy(dp->segs[s].allow, prefixes, n * sizeof(vx_prefix));
        dp->segs[s].nallow = n;
    }
    pthread_mutex_unlock(&dp->lock);
    return s < 0 ? -ENOENT : 0;
}

/* Remote id: the sockaddr (with the port) datagrams to it are sent to. */
int vx_dp_remote(vx_dp *dp, uint32_t id, const uint8_t *sa, uint32_t salen)
{
    VX_EXCLUSIVE(dp);
    if (id >= VX_MAX_REMOTES || salen > VX_ADDR_LEN)
        return -EINVAL;
    pthread_mutex_lock(&dp->lock);
    memset(&dp->remotes[id], 0, sizeof(vx_remote));
    memcpy(dp->remotes[id].sa, sa, salen);
    dp->remotes[id].salen = salen;
    dp->remotes[id].peer = vx_peer_of(dp, dp->remotes[id].sa);
    pthread_mutex_unlock(&dp->lock);
    return 0;
}

/* Action id (1..): encapsulate to remotes[k] with vnis[k], k < n. */
int vx_dp_action(vx_dp *dp, uint32_t id, uint32_t n, const uint32_t *remotes,
                 const uint32_t *vnis)
{
    VX_EXCLUSIVE(dp);
    if (id == 0 || id >= VX_MAX_ACTIONS || n > VX_ACTION_REMOTES)
        return -EINVAL;
    for (uint32_t k = 0; k < n; k++)
        if (remotes[k] >= VX_MAX_REMOTES || vnis[k] > 0xFFFFFFu)
            return -EINVAL;
    pthread_mutex_lock(&dp->lock);
    vx_action *a = &dp->actions[id];
    a->n = n;
    memcpy(a->remote, remotes, n * sizeof(uint32_t));
    memcpy(a->vni, vnis, n * sizeof(uint32_t));
    pthread_mutex_unlock(&dp->lock);
    return 0;
}

/* The send socket bound to source port `port` for datagrams with DF set (df) or not (-1:
 * none; frames of that flow go up). Waits for the sender thread's queued jobs first: they may
 * use the socket that is going away. */
void vx_dp_port_fd(vx_dp *dp, uint32_t port, uint32_t df, int fd)
{
    VX_EXCLUSIVE(dp);
    vx_sender_drain(dp);
    if (port < 65536)
        __atomic_store_n(&dp->port_fd[df != 0][port], fd, __ATOMIC_RELEASE);
}

/* Tunnel GSO: TCP super-frames to a remote with a link are written whole to the TAP fd (-1:
 * off), with outer TTL ttl where the settings leave it to the system. Waits for the sender
 * thread's queued jobs first, as vx_dp_port_fd. */
void vx_dp_link(vx_dp *dp, int fd, uint32_t ttl)
{
    VX_EXCLUSIVE(dp);
    vx_sender_drain(dp);
    pthread_mutex_lock(&dp->lock);
    dp->link_ttl = ttl ? ttl : 64;
    pthread_mutex_unlock(&dp->lock);
    __atomic_store_n(&dp->link_fd, fd, __ATOMIC_RELEASE);
}

/* The link of IPv4 remote id for tunnel GSO: the next hop's and the underlay device's MACs and
 * the source address (dst_mac NULL: none, its super-frames are cut and sent as datagrams). */
int vx_dp_remote_link(vx_dp *dp, uint32_t id, const uint8_t *dst_mac, const uint8_t *src_mac,
                      const uint8_t *saddr)
{
    VX_EXCLUSIVE(dp);
    if (id >= VX_MAX_REMOTES)
        return -EINVAL;
    pthread_mutex_lock(&dp->lock);
    vx_remote *r = &dp->remotes[id];
    uint16_t fam;
    memcpy(&fam, r->sa, 2);
    int ok = dst_mac != NULL && src_mac != NULL && saddr != NULL && fam == AF_INET;
    r->l2_ok = (uint8_t)ok;
    if (ok) {
        memcpy(r->l2_dst, dst_mac, 6);
        memcpy(r->l2_src, src_mac, 6);
        memcpy(r->l2_saddr, saddr, 4);
    }
    pthread_mutex_unlock(&dp->lock);
    return ok || dst_mac == NULL ? 0 : -EAFNOSUPPORT;
}

/* --- entries ---------------------------------------------------------------------------- */

/* Set (vni, mac): action id (0: none), vx_entry_flags, last seen (ms). *old_action: the
 * action it had (0 if new). 0, -ENOENT (vni not served), -EINVAL or -ENOMEM. */
int vx_dp_put(vx_dp *dp, uint32_t vni, const uint8_t *mac, uint32_t action, uint32_t flags,
              uint64_t seen_ms, uint32_t *old_action)
{
    VX_EXCLUSIVE(dp);
    int rc = -ENOENT;
    *old_action = 0;
    if (action >= VX_MAX_ACTIONS)
        return -EINVAL;
    pthread_mutex_lock(&dp->lock);
    int s = vx_seg_index(dp, vni);
    if (s >= 0) {
        vx_entry *e = insert(dp, key_of((uint32_t)s, mac));
        rc = -ENOMEM;
        if (e != NULL) {
            *old_action = e->action;
            e->action = action;
            e->flags = flags;
            e->seen_ms = seen_ms;
            rc = 0;
        }
    }
    pthread_mutex_unlock(&dp->lock);
    return rc;
}

/* The entry of (vni, mac), NULL if none; call with dp->lock held. */
static vx_entry *lookup(const vx_dp *dp, uint32_t vni, const uint8_t *mac)
{
    int s = vx_seg_index(dp, vni);
    return s < 0 ? NULL : vx_find(dp, (uint32_t)s, mac);
}

/* Remove (vni, mac): 1 (*old_action its action) or 0 if absent. */
int vx_dp_del(vx_dp *dp, uint32_t vni, const uint8_t *mac, uint32_t *old_action)
{
    VX_EXCLUSIVE(dp);
    pthread_mutex_lock(&dp->lock);
    vx_entry *e = lookup(dp, vni, mac);
    *old_action = e != NULL ? e->action : 0;
    if (e != NULL)
        erase(dp, e);
    pthread_mutex_unlock(&dp->lock);
    return e != NULL;
}

/* 1 and the entry's fields if (vni, mac) is installed, else 0. */
int vx_dp_get(vx_dp *dp, uint32_t vni, const uint8_t *mac, uint32_t *action, uint32_t *flags,
              uint64_t *seen_ms)
{
    VX_EXCLUSIVE(dp);
    pthread_mutex_lock(&dp->lock);
    const vx_entry *e = lookup(dp, vni, mac);
    if (e != NULL) {
        *action = e->action;
        *flags = e->flags;
        *seen_ms = e->seen_ms;
    }
    pthread_mutex_unlock(&dp->lock);
    return e != NULL;
}

/* Copy up to cap entries of vni (MACs 6 bytes each); returns how many vni has in all. */
uint32_t vx_dp_dump(vx_dp *dp, uint32_t vni, uint8_t *macs, uint32_t *actions,
                    uint32_t *flags, uint64_t *seen_ms, uint32_t cap)
{
    VX_EXCLUSIVE(dp);
    uint32_t n = 0;
    pthread_mutex_lock(&dp->lock);
    int s = vx_seg_index(dp, vni);
    for (uint64_t j = 0; s >= 0 && j < dp->cap; j++) {
        vx_entry *e = &dp->tab[j];
        if (e->key <= VX_KEY_TOMB || (e->key >> 48) != (uint64_t)s + 1)
            continue;
        if (n < cap) {
            for (int k = 0; k < 6; k++)
                macs[n * 6 + k] = (uint8_t)(e->key >> (40 - 8 * k));
            actions[n] = e->action;
            flags[n] = e->flags;
            seen_ms[n] = e->seen_ms;
        }
        n++;
    }
    pthread_mutex_unlock(&dp->lock);
    return n;
}

/* --- counters --------------------------------------------------------------------------- */

/* The counters of vni: 1, or 0 (zeros) if it is not served. */
int vx_dp_read_seg_counters(vx_dp *dp, uint32_t vni, vx_seg_counters *out)
{
    pthread_mutex_lock(&dp->lock);
    int s = vx_seg_index(dp, vni);
    if (s >= 0)
        *out = dp->segs[s].c;
    else
        memset(out, 0, sizeof(*out));
    pthread_mutex_unlock(&dp->lock);
    return s >= 0;
}

void vx_dp_read_counters(vx_dp *dp, vx_dp_counters *out)
{
    pthread_mutex_lock(&dp->lock);
    *out = dp->c;
    pthread_mutex_unlock(&dp->lock);
}

/* The row of the remote VTEP at sockaddr sa (its address; the port does not count): found, or
 * added while fewer than VX_MAX_PEERS are, else row 0 (the others). Call with dp->lock held. */
uint32_t vx_peer_of(vx_dp *dp, const uint8_t *sa)
{
    uint16_t fam;
    memcpy(&fam, sa, 2);
    uint8_t addr[16] = {0};
    if (fam == AF_INET)
        memcpy(addr, sa + 4, 4);
    else if (fam == AF_INET6)
        memcpy(addr, sa + 8, 16);
    else
        return 0;
    uint32_t h = fam;
    for (int k = 0; k < 16; k += 4)
        h = vx_fmix32(h ^ vx_get32(addr + k));
    const uint32_t mask = 2 * VX_MAX_PEERS - 1;
    for (uint32_t i = h & mask;; i = (i + 1) & mask) {
        uint32_t row = dp->peer_slot[i];
        if (row == 0) {
            if (dp->npeers == VX_MAX_PEERS)
                return 0;
            row = ++dp->npeers;
            dp->peer_slot[i] = (uint16_t)row;
            dp->peers[row].family = fam;
            memcpy(dp->peers[row].addr, addr, 16);
            return row;
        }
        if (dp->peers[row].family == fam && memcmp(dp->peers[row].addr, addr, 16) == 0)
            return row;
    }
}

/* Copy up to cap peer rows (row 0 first: the others); returns how many there are in all. */
uint32_t vx_dp_read_peers(vx_dp *dp, vx_peer_counters *out, uint32_t cap)
{
    pthread_mutex_lock(&dp->lock);
    uint32_t n = dp->npeers + 1;
    memcpy(out, dp->peers, (n < cap ? n : cap) * sizeof(vx_peer_counters));
    pthread_mutex_unlock(&dp->lock);
    return n;
}

/*
 * Count a send of slots first..first+n-1 of b to remote `to` that returned r (vx_udp_send):
 * what the kernel took as tx_packets / tx_bytes (inner bytes) of segment g and of the remote's
 * peer row, the rest as send errors by errno
 * (EAGAIN when the socket buffer was full). With bytes == 0 each datagram is a packet; else
 * the n datagrams are the chunks of one super-frame of `bytes` bytes, one packet if the kernel
 * took them all.
 */
void vx_count_send(vx_dp *dp, vx_segment *g, const vx_remote *to, const vx_batch *b,
                   uint32_t first, uint32_t n, int r, uint64_t bytes)
{
    vx_peer_counters *p = &dp->peers[to->peer];
    uint32_t sent = r > 0 ? (uint32_t)r : 0;
    uint64_t by = 0;
    if (bytes == 0)
        for (uint32_t i = first; i < first + sent; i++)
            by += b->frame_len[i];
    pthread_mutex_lock(&dp->lock);
    if (bytes == 0) {
        g->c.tx_packets += sent;
        g->c.tx_bytes += by;
        p->tx_packets += sent;
        p->tx_bytes += by;
    } else if (sent == n) {
        g->c.tx_packets++;
        g->c.tx_bytes += bytes;
        p->tx_packets++;
        p->tx_bytes += bytes;
    }
    if (r < 0)
        dp->c.send_errors[-r < VX_NERRNO ? -r : VX_NERRNO - 1] += n;
    else if (sent < n)
        dp->c.send_errors[EAGAIN] += n - sent;
    pthread_mutex_unlock(&dp->lock);
}
