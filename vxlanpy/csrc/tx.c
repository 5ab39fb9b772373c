/*
 * Device -> wire in C: match each frame read from a segment's TAP against what the engine
 * installed (the segment's rule, then the entry of its destination MAC) and execute the
 * action: encapsulate and send to the action's remotes. Frames that match nothing go up.
 */
#include <stdlib.h>

#include "vx_internal.h"

static uint32_t tx_match(const uint8_t *f, uint32_t len)
{
    uint32_t m = VX_TXM_ANY | ((f[0] & 1) ? VX_TXM_GROUP_DST : 0), et = vx_get16(f + 12);
    if (et == VX_ETH_P_8021Q || et == VX_ETH_P_8021AD)
        m |= VX_TXM_VLAN;
    else if (et == VX_ETH_P_ARP)
        m |= VX_TXM_ARP;
    else if (et == VX_ETH_P_IPV6 && len > VX_ETH_HLEN + 40 && f[VX_ETH_HLEN + 6] == 58
             && f[VX_ETH_HLEN + 40] == 135)
        m |= VX_TXM_ND;
    return m;
}

/*
 * Classify slots first..first+n-1 read from the device of vni: action[i] = the action id for a
 * frame that matched an installed action (encapsulated in place for the action's first
 * remote's VNI: header, payload_len, sport), VX_UPCALL otherwise. Returns the number of hits,
 * or -ENOENT if vni is not served.
 */
int vx_tx_classify(vx_dp *dp, uint32_t vni, vx_batch *b, uint32_t first, uint32_t n)
{
    VX_EXCLUSIVE(dp);
    int hits = 0;
    pthread_mutex_lock(&dp->lock);
    int s = vx_seg_index(dp, vni);
    if (s < 0) {
        pthread_mutex_unlock(&dp->lock);
        return -ENOENT;
    }
    const vx_rule *rule = &dp->segs[s].rule;
    uint32_t lo = dp->cfg.srcport_lo, hi = dp->cfg.srcport_hi;
    vx_outer outer = dp->cfg.outer;
    for (uint32_t i = first; i < first + n; i++) {
        const uint8_t *f = vx_frame(b, i);
        uint32_t len = b->frame_len[i], act;
        b->action[i] = VX_UPCALL;
        if (len < VX_ETH_HLEN || len > b->slot - b->headroom)
            continue;
        uint32_t m = tx_match(f, len);
        if (m & rule->tx_up)
            continue;
        if (m & VX_TXM_GROUP_DST) {
            act = rule->group_action;
        } else {
            const vx_entry *e = vx_find(dp, (uint32_t)s, f);
            act = e != NULL && (e->flags & VX_EF_ENCAP) ? e->action : 0;
        }
        if (act == 0 || dp->actions[act].n == 0)
            continue;
        b->action[i] = (int32_t)act;
        b->vni[i] = dp->actions[act].vni[0];
        hits++;
    }
    pthread_mutex_unlock(&dp->lock);
    for (uint32_t i = first; i < first + n; i++) /* encapsulate the hits, outside the lock */
        if (b->action[i] > 0) {
            vx_encap(b, i, 1, lo, hi);
            vx_outer_fields(b, i, 1, &outer);
        }
    return hits;
}

static int send_to(vx_dp *dp, int fd, const vx_batch *b, uint32_t first, uint32_t n,
                   const vx_remote *r, const vx_outer *o)
{
    return vx_udp_send(fd, b, first, n, r->sa, r->salen, &dp->no_gso, o);
}

/* The send socket of slot i's flow (its source port, and its DF), or -1. */
static int flow_fd(vx_dp *dp, const vx_batch *b, uint32_t i)
{
    return __atomic_load_n(&dp->port_fd[b->df[i] != 0][b->sport[i]], __ATOMIC_ACQUIRE);
}

/* Rewrite the VNI in the VXLAN headers of slots first..first+n-1. */
static void set_vni(vx_batch *b, uint32_t first, uint32_t n, uint32_t vni)
{
    for (uint32_t i = first; i < first + n; i++) {
        uint8_t *h = vx_payload(b, i);
        h[4] = (uint8_t)(vni >> 16);
        h[5] = (uint8_t)(vni >> 8);
        h[6] = (uint8_t)vni;
    }
}

/* Send the super-frame in slot i to remote k of its action: whole with tunnel GSO if the remote
 * has a link, else cut and queued for the sender thread if there is one, else sent from here. Returns 0, or -1 if it must go up instead (it
 * cannot be cut, or there is no socket for its source port yet). */
static int forward_super(vx_dp *dp, uint32_t s, vx_batch *b, uint32_t i, uint32_t k)
{
    vx_segment *g = &dp->segs[s];
    const vx_action *a = &dp->actions[b->action[i]];
    const vx_remote *r = &dp->remotes[a->remote[k]];
    int link = __atomic_load_n(&dp->link_fd, __ATOMIC_ACQUIRE);
    if (link >= 0 && r->l2_ok) { /* tunnel GSO: whole, to the TAP redirected to the underlay */
        int rc = vx_tgso_send(dp, link, b, i, a->vni[k], r);
        if (rc != -EPROTO && rc != -EMSGSIZE) {
            vx_count_send(dp, g, r, b, i, 1, rc == 0 ? 1 : rc, b->frame_len[i]);
            pthread_mutex_lock(&dp->lock);
            g->c.gso_frames++;
            dp->c.tgso_frames += rc == 0;
            pthread_mutex_unlock(&dp->lock);
            return 0;
        }
    }
    int fd = flow_fd(dp, b, i);
    uint32_t lo = dp->cfg.srcport_lo, hi = dp->cfg.srcport_hi;
    vx_outer outer = dp->cfg.outer;
    if (fd < 0)
        return -1;
    vx_sender *t = dp->sender;
    if (t == NULL) {
        uint32_t n = vx_super_prepare(b, i, a->vni[k], &dp->scratch, lo, hi, &outer);
        if (n == 0)
            return -1;
        int rc = send_to(dp, fd, &dp->scratch, 0, n, r, &outer);
        vx_count_send(dp, g, r, &dp->scratch, 0, n, rc, b->frame_len[i]);
    } else {
        vx_job *j = vx_sender_claim(t);
        uint32_t n = vx_super_prepare(b, i, a->vni[k], &j->b, lo, hi, &outer);
        if (n == 0)
            return -1; /* the job stays unqueued; the next super-frame fills it */
        j->n = n;
        j->seg = s;
        j->bytes = b->frame_len[i];
        j->fd = fd;
        j->r = *r;
        j->outer = outer;
        vx_sender_push(t);
    }
    pthread_mutex_lock(&dp->lock);
    g->c.gso_frames++;
    pthread_mutex_unlock(&dp->lock);
    return 0;
}

/* Send the run of slots first..first+n-1 (one action, one source port, no super-frame) to
 * every remote of the action; VX_UPCALL for all of them if the port has no socket yet. */
static uint32_t forward_run(vx_dp *dp, uint32_t s, vx_batch *b, uint32_t first, uint32_t n)
{
    vx_segment *g = &dp->segs[s];
    const vx_action *a = &dp->actions[b->action[first]];
    int fd = flow_fd(dp, b, first);
    vx_outer outer = dp->cfg.outer;
    if (fd < 0) {
        for (uint32_t i = first; i < first + n; i++)
            b->action[i] = VX_UPCALL;
        return n;
    }
    vx_sender_drain(dp); /* these must not overtake super-frames of their flow queued */
    for (uint32_t k = 0; k < a->n; k++) {
        if (k && a->vni[k] != a->vni[k - 1])
            set_vni(b, first, n, a->vni[k]); /* sendmmsg copied the previous copies */
        const vx_remote *r = &dp->remotes[a->remote[k]];
        int rc = send_to(dp, fd, b, first, n, r, &outer);
        vx_count_send(dp, g, r, b, first, n, rc, 0);
    }
    if (vx_frame(b, first)[0] & 1) { /* the segment's group action: a flood */
        pthread_mutex_lock(&dp->lock);
        g->c.floods += n;
        pthread_mutex_unlock(&dp->lock);
    }
    return 0;
}

/* Execute the actions of slots 0..n-1; returns the upcalls left among them. */
static uint32_t execute(vx_dp *dp, uint32_t s, vx_batch *b, uint32_t n)
{
    uint32_t upcalls = 0, i = 0;
    while (i < n) {
        int32_t a = b->action[i];
        if (a <= 0) {
            upcalls++;
            i++;
            continue;
        }
        if (b->gso_type[i] & 0x7F) {
            const vx_action *act = &dp->actions[a];
            for (uint32_t k = 0; k < act->n; k++)
                if (forward_super(dp, s, b, i, k) < 0) { /* fails for every k alike */
                    b->action[i] = VX_UPCALL;
                    upcalls++;
                    break;
                }
            i++;
            continue;
        }
        uint32_t j = i + 1;
        while (j < n && b->action[j] == a && b->sport[j] == b->sport[i] && b->df[j] == b->df[i]
               && !(b->gso_type[j] & 0x7F) && ((vx_frame(b, j)[0] ^ vx_frame(b, i)[0]) & 1) == 0)
            j++;
        upcalls += forward_run(dp, s, b, i, j - i);
        i = j;
    }
    return upcalls;
}

/*
 * Device -> wire for the TAP of vni: read a batch (partial checksums completed), classify,
 * execute the hits (runs of one action and source port in one batched send per remote,
 * super-frames cut and sent as UDP GSO). Repeats up to `rounds` batches while nothing needs the
 * engine. Returns frames read in the last batch (its upcall slots have action VX_UPCALL;
 * *upcalls says how many), 0 when the TAP is drained, or -errno if it is gone.
 */
int vx_tx_pump(vx_dp *dp, uint32_t vni, vx_batch *b, uint32_t rounds, uint32_t *upcalls)
{
    return vx_tx_pump_first(dp, vni, b, rounds, b->capacity, upcalls);
}

int vx_tx_pump_first(vx_dp *dp, uint32_t vni, vx_batch *b, uint32_t rounds, uint32_t first_max,
                     uint32_t *upcalls)
{
    VX_EXCLUSIVE(dp);
    *upcalls = 0;
    if (first_max == 0)
        first_max = 1;
    pthread_mutex_lock(&dp->lock);
    int s = vx_seg_index(dp, vni);
    int fd = s < 0 ? -1 : dp->segs[s].tap_fd;
    uint32_t vnet = s < 0 ? 0 : dp->segs[s].vnet;
    pthread_mutex_unlock(&dp->lock);
    if (s < 0 || fd < 0)
        return -ENOENT;
    int n = 0;
    for (uint32_t round = 0; round < rounds; round++) {
        uint32_t completed = 0;
        n = vx_tap_read_upto(fd, vnet, b, 0, round ? b->capacity : first_max, &completed);
        if (completed || n > 0) {
            pthread_mutex_lock(&dp->lock);
            dp->c.checksums_completed += completed;
            if (n > 0) {
                dp->c.tx_batches[vx_batch_bucket((uint32_t)n)]++;
                dp->c.tx_batch_frames += (uint32_t)n;
            }
            pthread_mutex_unlock(&dp->lock);
        }
        if (n <= 0)
            return n;
        if (vx_tx_classify(dp, vni, b, 0, (uint32_t)n) < 0)
            return -ENOENT;
        *upcalls = execute(dp, (uint32_t)s, b, (uint32_t)n);
        if (*upcalls) {
            vx_sender_drain(dp); /* what the engine sends next must not overtake the queue */
            return n;
        }
        if ((uint32_t)n < b->capacity) /* drained, or the first batch's first_max */
            return n;
    }
    return n;
}
