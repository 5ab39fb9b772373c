/*
 * What the C units share and Python does not see: byte and checksum helpers, slot addressing,
 * and the datapath's own structures (the flow table, segments, remotes, actions, the sender
 * thread). One definition of each; every unit includes this after vx.h.
 */
#ifndef VXLANPY_VX_INTERNAL_H
#define VXLANPY_VX_INTERNAL_H
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "vx.h"

#define VX_FLAG_I 0x08
#define VX_ETH_P_IP 0x0800
#define VX_ETH_P_ARP 0x0806
#define VX_ETH_P_IPV6 0x86DD
#define VX_ETH_P_8021Q 0x8100
#define VX_ETH_P_8021AD 0x88A8
#define VX_TCP_FIN 0x01
#define VX_TCP_PSH 0x08
#define VX_TCP_ACK 0x10
#define VX_TCP_CWR 0x80
#define VX_VNET_F_NEEDS_CSUM 1

/* --- bytes and one's-complement sums --------------------------------------------------- */

static inline uint32_t vx_get16(const uint8_t *p)
{
    return ((uint32_t)p[0] << 8) | p[1];
}

static inline uint32_t vx_get32(const uint8_t *p)
{
    return (vx_get16(p) << 16) | vx_get16(p + 2);
}

static inline void vx_put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline uint64_t vx_mac48(const uint8_t *m)
{
    return ((uint64_t)m[0] << 40) | ((uint64_t)m[1] << 32) | ((uint64_t)m[2] << 24) |
           ((uint64_t)m[3] << 16) | ((uint64_t)m[4] << 8) | m[5];
}

/* MurmurHash3's 32-bit finaliser: spreads a hash's entropy over all bits. */
static inline uint32_t vx_fmix32(uint32_t h)
{
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}

/* Sum of the big-endian 16-bit words of p[0..n) (an odd last byte is the high half of a
 * word): for headers; payloads go through vx_csum16. */
static inline uint64_t vx_sum16(const uint8_t *p, size_t n)
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
static inline uint16_t vx_fold16(uint64_t s)
{
    while (s >> 16)
        s = (s & 0xFFFFu) + (s >> 16);
    return (uint16_t)s;
}

/* The pseudo-header sum of an IP packet (addresses and protocol; without the L4 length). */
static inline uint64_t vx_pseudo(const uint8_t *f, const vx_l3l4 *h)
{
    const uint8_t *ip = f + h->l3;
    return (h->ip == 4 ? vx_sum16(ip + 12, 8) : vx_sum16(ip + 8, 32)) + h->proto;
}

/* --- slots of a batch ------------------------------------------------------------------ */

static inline uint8_t *vx_frame(const vx_batch *b, uint32_t i)
{
    return b->buf + (size_t)i * b->slot + b->headroom;
}

static inline uint8_t *vx_payload(const vx_batch *b, uint32_t i)
{
    return b->buf + (size_t)i * b->slot + b->headroom - VX_HLEN;
}

/* How many datagrams one vx_udp_recv into slots first..cap asks for: one recvmmsg of at most
 * VX_RECV_CHUNK. Fewer back than this means the socket's queue was empty then. */
static inline uint32_t vx_recv_want(uint32_t first, uint32_t cap)
{
    return first >= cap ? 0 : cap - first < VX_RECV_CHUNK ? cap - first : VX_RECV_CHUNK;
}

/* The receive pump's next ask after got datagrams (a batch, or a full call): twice that,
 * within VX_RECV_FIRST..VX_RECV_CHUNK (rx.c). */
enum { VX_RECV_FIRST = 8 };
static inline uint32_t vx_recv_ask_next(uint32_t got)
{
    uint32_t a = 2 * got;
    return a < VX_RECV_FIRST ? VX_RECV_FIRST : a > VX_RECV_CHUNK ? VX_RECV_CHUNK : a;
}

/* errnos of device I/O that mean the device is gone (deleted, or the fd detached) */
static inline int vx_gone(int e)
{
    return e == EBADFD || e == EIO || e == ENODEV || e == ENXIO || e == EBADF;
}

/* --- the datapath ---------------------------------------------------------------------- */

typedef struct {
    uint64_t key;     /* (segment index + 1) << 48 | MAC; 0 empty, 1 deleted */
    uint64_t seen_ms; /* last delivery with VX_EF_REFRESH */
    uint32_t action;  /* the remotes (transmit) and the VTEPs frames may come from (receive) */
    uint32_t flags;   /* vx_entry_flags */
} vx_entry;
#define VX_KEY_TOMB 1u

typedef struct {
    uint32_t vni, used, vnet, mtu;
    int tap_fd;
    vx_rule rule;
    vx_seg_counters c;
    uint32_t nallow;
    vx_prefix allow[VX_ALLOW_PREFIXES]; /* the sources rule.rx_from == VX_FROM_ALLOWED admits */
} vx_segment;

typedef struct {
    uint8_t sa[VX_ADDR_LEN]; /* where to send: sockaddr_in or sockaddr_in6, port included */
    uint32_t salen;
    /* tunnel GSO (tgso.c): the link to it, if the engine installed one (IPv4 only) */
    uint8_t l2_ok, l2_dst[6], l2_src[6], l2_saddr[4];
    uint32_t peer;           /* its row in vx_dp.peers (0: the others' row) */
} vx_remote;

typedef struct {
    uint32_t n;
    uint32_t remote[VX_ACTION_REMOTES];
    uint32_t vni[VX_ACTION_REMOTES];
} vx_action;

/* One super-frame's chunks for the sender thread, and where they go. */
typedef struct {
    vx_batch b;
    uint32_t n, seg; /* chunks; the segment index they are counted in */
    uint64_t bytes;  /* the super-frame's length (counted as one packet) */
    int fd;
    vx_remote r;
    vx_outer outer;  /* the settings it was cut with */
} vx_job;

/* The sender thread: the pump's thread cuts super-frames into jobs, this one sends them, so
 * device -> wire runs on two cores. Jobs form a ring: head is the next job the pump fills,
 * tail the next one the thread sends. */
typedef struct {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t work, done;
    uint32_t head, tail;
    int stop;
    vx_job jobs[VX_SENDER_JOBS];
} vx_sender;

typedef struct vx_loop vx_loop;

struct vx_dp {
    pthread_mutex_t lock; /* the table, segments, remotes, actions and counters */
    vx_entry *tab;
    uint64_t cap, used, tomb;
    vx_segment segs[VX_MAX_SEGMENTS];
    uint32_t nsegs;
    vx_remote *remotes;
    vx_action *actions;
    int32_t port_fd[2][65536]; /* send socket bound to each source port, [DF], -1: none */
    vx_config cfg;
    int32_t no_gso;         /* a route refused UDP GSO: send runs with sendmmsg */
    vx_dp_counters c;
    uint32_t chunk_max_frame;
    vx_batch scratch;       /* chunks of a super-frame sent from the pump's own thread */
    /* receive pump: slots pend_lo..pend_hi-1 of the batch at pend_buf wait to be handled */
    const uint8_t *pend_buf;
    uint32_t pend_lo, pend_hi, pend_full;
    uint32_t recv_ask;      /* datagrams the next recvmmsg asks for (0: VX_RECV_FIRST) */
    vx_sender *sender;      /* NULL: super-frames are sent from the pump's own thread */
    int32_t link_fd;        /* tunnel GSO: the TAP redirected to the underlay, -1: off */
    uint32_t link_ttl;      /* its outer TTL when the settings leave it to the system */
    uint32_t ip_id;         /* its outer IPv4 identification */
    /* per remote VTEP counters: row 0 adds up the peers past VX_MAX_PEERS, rows 1..npeers
     * are the addresses in the order seen; peer_slot (open addressing) holds row numbers */
    vx_peer_counters peers[VX_MAX_PEERS + 1];
    uint32_t npeers;
    uint16_t peer_slot[2 * VX_MAX_PEERS];
    vx_loop *loop;          /* the datapath thread (loop.c), NULL: none */
};

/* The batch-size bucket of n (>= 1): the smallest k with n <= 2^k, at most the last. */
static inline uint32_t vx_batch_bucket(uint32_t n)
{
    uint32_t k = n <= 1 ? 0 : 32 - (uint32_t)__builtin_clz(n - 1);
    return k < VX_BATCH_BUCKETS ? k : VX_BATCH_BUCKETS - 1;
}

/* table.c */
int vx_seg_index(const vx_dp *dp, uint32_t vni);
vx_entry *vx_find(const vx_dp *dp, uint32_t seg, const uint8_t *mac);
int vx_batch_alloc(vx_batch *b, uint32_t capacity, uint32_t max_frame);
void vx_batch_release(vx_batch *b);
void vx_count_send(vx_dp *dp, vx_segment *g, const vx_remote *to, const vx_batch *b,
                   uint32_t first, uint32_t n, int r, uint64_t bytes);
uint32_t vx_peer_of(vx_dp *dp, const uint8_t *sa);

/* tap.c: vx_tap_read that stops at slot `last` */
int vx_tap_read_upto(int fd, uint32_t vnet, vx_batch *b, uint32_t first, uint32_t last,
                     uint32_t *completed);

/* tx.c: vx_tx_pump whose first batch holds at most first_max frames. The datapath thread
 * asks for one after an idle spell: that frame goes out before the TAP is asked for more,
 * and the read that would have found the queue empty (a ping's) is the next epoll's. */
int vx_tx_pump_first(vx_dp *dp, uint32_t vni, vx_batch *b, uint32_t rounds, uint32_t first_max,
                     uint32_t *upcalls);

/* CLOCK_MONOTONIC in µs */
static inline uint64_t vx_now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000u + (uint64_t)t.tv_nsec / 1000u;
}

/* tgso.c */
int vx_tgso_send(vx_dp *dp, int fd, const vx_batch *b, uint32_t i, uint32_t vni,
                 const vx_remote *r);

/* loop.c: a call from any thread but the datapath thread's own parks that thread for its
 * duration (nested sections counted); VX_EXCLUSIVE(dp) at the top of a function does it */
int vx_dp_exclusive_begin(vx_dp *dp);
void vx_dp_exclusive_end(vx_dp *dp);
void vx_dp_exclusive_cleanup(vx_dp **dpp);
#define VX_EXCLUSIVE(dp)                                                                 \
    vx_dp *vx_excl_ __attribute__((cleanup(vx_dp_exclusive_cleanup), unused)) =         \
        vx_dp_exclusive_begin(dp) ? (dp) : NULL

/* sender.c */
int vx_thread_start(pthread_t *thread, void *(*main)(void *), void *arg);
vx_job *vx_sender_claim(vx_sender *t);
void vx_sender_push(vx_sender *t);
void vx_sender_stop(vx_dp *dp);


#endif
