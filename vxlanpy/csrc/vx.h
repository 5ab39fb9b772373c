/*
 * vxlanpy's C fast path: everything Python calls, declared once. The C units include this
 * header (the compiler holds each definition to its declaration), and _build_native.py hands
 * the same text to cffi as its cdef (lines starting with '#' removed), so Python sees exactly
 * these functions, structs and enums. Constants and counters live here as enums and structs
 * and nowhere else: Python reads them through vxlanpy.abi (lib.* when the extension is built,
 * this file parsed by cffi when it is not).
 *
 * The split is Open vSwitch's: the engine (engine.py) decides and *installs* what C may do on
 * its own (datapath.py: segment rules, per-MAC entries pointing at actions); C matches frames
 * against what is installed and executes the action. Whatever matches nothing goes up to the
 * engine (an upcall). C holds no forwarding policy of its own.
 */
#ifndef VXLANPY_VX_H
#define VXLANPY_VX_H
#include <stddef.h>
#include <stdint.h>

enum vx_const {
    VX_HLEN = 8,                /* VXLAN header */
    VX_ETH_HLEN = 14,           /* Ethernet header */
    VX_ADDR_LEN = 28,           /* room for a sockaddr_in6 per slot (vx_batch.addrs) */
    VX_VNET_HLEN = 10,          /* struct virtio_net_hdr */
    VX_MAX_BATCH = 1024,        /* slots of the largest batch the pumps take */
    VX_MAX_CHUNKS = 160,        /* TCP chunks one super-frame is cut into at most */
    VX_MAX_SEGMENTS = 4096,     /* VNIs one datapath serves */
    VX_MAX_REMOTES = 65536,     /* remote ids (an address and port each) */
    VX_MAX_ACTIONS = 65536,     /* action ids; 0 is "no action" */
    VX_ACTION_REMOTES = 64,     /* remotes of one action (a flood list) */
    VX_LEN_TRUNCATED = 0x7FFFFFFF, /* payload_len of a datagram larger than its slot */
    VX_SENDER_JOBS = 4,         /* super-frames queued for the sender thread at most */
    VX_GSO_MAX_SEGS = 64,       /* datagrams of one UDP GSO send */
    VX_GSO_MAX_BYTES = 65000,   /* bytes of one UDP GSO send */
    VX_NERRNO = 256,            /* send errors are counted per errno below this */
    VX_RECV_CHUNK = 64,         /* datagrams per recvmmsg / sendmmsg call */
    VX_ALLOW_PREFIXES = 64,     /* source prefixes of one segment's allowlist */
    VX_MAX_PEERS = 1024,        /* remote VTEPs counted one by one (vx_peer_counters) */
    VX_BATCH_BUCKETS = 11,      /* batch-size histogram: sizes up to 1, 2, 4, ... 1024 */
    VX_LOOP_TAPS = 1024         /* TAPs the datapath thread polls at most */
};

/* What vx_rx_pump says of the socket and its batch (out[1]). */
enum vx_rx_more {
    VX_RX_DRAINED = 0,          /* the socket is empty */
    VX_RX_MORE = 1,             /* it may hold more */
    VX_RX_PENDING = 2           /* received datagrams wait in the batch: call again with it */
};

/* What the datapath thread holds for the engine (vx_loop_held.kind). */
enum vx_held {
    VX_HELD_NONE = 0,
    VX_HELD_TX = 1,             /* vx_tx_pump of TAP ``vni`` returned n, upcalls */
    VX_HELD_RX = 2              /* vx_rx_pump returned n, upcalls, more, gone */
};

/* Header check of a received payload (vx_batch.status); wire.STATUS_REASONS names them. */
enum vx_status {
    VX_ST_OK = 0,
    VX_ST_TOO_SHORT = 1,        /* shorter than the VXLAN header */
    VX_ST_NO_I_FLAG = 2,        /* I flag clear */
    VX_ST_RESERVED = 3,         /* strict parsing: a reserved bit set */
    VX_ST_INNER_TOO_SHORT = 4,  /* inner frame shorter than an Ethernet header */
    VX_ST_ECN = 5               /* outer CE over a not-ECT inner packet (RFC 6040: drop) */
};

/* Per-slot offload state (vx_batch.offload). */
enum vx_offload {
    VX_OFF_NEEDS_CSUM = 1,      /* read from a TAP: the L4 checksum is partial (virtio-net) */
    VX_OFF_CSUM_OK = 2,         /* received: the inner L4 checksum verifies (or was completed) */
    VX_OFF_COALESCED = 4        /* received: a UDP GRO receive merged into one super-frame */
};

/* virtio-net GSO types (vx_batch.gso_type), as the TAP reports them. */
enum vx_gso {
    VX_GSO_NONE = 0,
    VX_GSO_TCPV4 = 1,
    VX_GSO_TCPV6 = 4,
    VX_GSO_ECN = 128
};

/* Per-slot verdict of the datapath (vx_batch.action): >= 0 handled in C (transmit: the action
 * id; receive: the segment index), or one of these. */
enum vx_verdict {
    VX_UPCALL = -1,             /* nothing installed matched: the engine decides */
    VX_DROP = -2                /* dropped and counted in C (a datagram larger than its slot) */
};

/* Match fields: what the classifier reads off a frame. A segment's rule names the ones whose
 * frames go up (vx_rule.tx_up / rx_up); frames showing none of them are matched by MAC. */
enum vx_tx_match {
    VX_TXM_GROUP_DST = 1,       /* destination MAC is a group address */
    VX_TXM_VLAN = 2,            /* 802.1Q / 802.1ad tagged */
    VX_TXM_ARP = 4,             /* untagged ARP */
    VX_TXM_ND = 8,              /* untagged IPv6 neighbour solicitation */
    VX_TXM_ANY = 16             /* every frame (a segment the engine handles whole) */
};
enum vx_rx_match {
    VX_RXM_GROUP_SRC = 1,       /* inner source MAC is a group address */
    VX_RXM_ZERO_SRC = 2,        /* inner source MAC is all zeros */
    VX_RXM_VLAN = 4,            /* 802.1Q / 802.1ad tagged */
    VX_RXM_ANY = 8              /* every frame (a segment the engine handles whole) */
};

/* Header parsing (vx_config.strict, vx_decap): reserved bits ignored (RFC 7348), a reserved bit
 * set is VX_ST_RESERVED, or so but for the VXLAN-GBP bits (G, D, A and the group policy ID). */
enum vx_strict {
    VX_STRICT_OFF = 0,
    VX_STRICT_ON = 1,
    VX_STRICT_GBP = 2
};

/* VXLAN-GBP (draft-smith-vxlan-group-policy): G in the first header byte, D and A in the
 * second, the 16-bit group policy ID in the third and fourth. */
enum vx_gbp_bits {
    VX_GBP_G = 0x80,            /* a group policy ID is present */
    VX_GBP_D = 0x40,            /* don't learn the inner source address */
    VX_GBP_A = 0x08             /* the policy has been applied already */
};

/* What an installed (VNI, MAC) entry lets C do; the engine sets them. */
enum vx_entry_flags {
    VX_EF_ENCAP = 1,            /* transmit: frames to this MAC take the entry's action */
    VX_EF_DELIVER = 2,          /* receive: frames from this MAC are delivered when they came
                                   from one of the action's remotes (else: up) */
    VX_EF_DELIVER_ANY = 4,      /* receive: delivered whatever VTEP sent them */
    VX_EF_REFRESH = 8,          /* receive: a delivery refreshes the entry's last-seen time */
    VX_EF_STATIC = 16           /* the engine's note for listings (C does not read it) */
};

/* A segment's rule for a received source MAC with no entry. */
enum vx_miss {
    VX_MISS_UPCALL = 0,
    VX_MISS_DELIVER = 1,
    VX_MISS_REFUSE = 2          /* deliver, counted in learn_refused (learning on, FDB full) */
};

/* Which outer sources C may deliver from at all (vx_rule.rx_from). */
enum vx_from {
    VX_FROM_ANY = 0,            /* any VTEP */
    VX_FROM_ALLOWED = 1,        /* a VTEP in the segment's prefixes (vx_dp_allow); others: up */
    VX_FROM_NONE = 2            /* none: every received frame goes up */
};

/*
 * A batch of frames in one buffer (a FrameBatch, batch.py: keep the two in step). Slot i starts
 * at buf + i * slot; its VXLAN header is the 8 bytes at headroom - 8 and its frame starts at
 * headroom. The columns are per slot.
 */
typedef struct vx_batch {
    uint8_t *buf;
    uint32_t slot, headroom, capacity, max_frame;
    uint32_t *frame_len, *payload_len, *vni;
    int32_t *status;
    uint16_t *sport;
    uint8_t *gso_type;
    uint16_t *gso_size;
    uint8_t *offload;
    int32_t *action;
    uint8_t *addrs;  /* each datagram's source sockaddr, VX_ADDR_LEN bytes a slot */
    uint32_t *order; /* receive pump: the slots it filled, in the order they came off the wire */
    uint8_t *tos;    /* outer TOS / traffic class: to send with (vx_outer_fields), or received */
    uint8_t *ttl;    /* outer TTL / hop limit to send with; 0: the socket's */
    uint8_t *df;     /* outer DF to send with (which socket of the source port) */
} vx_batch;

/* Where a frame's network headers are (vx_parse). Lengths are only those the headers claim:
 * ok says which were checked against the frame. */
typedef struct vx_l3l4 {
    uint16_t ethertype;  /* after any VLAN tags */
    uint16_t l3;         /* offset of the IP header */
    uint8_t ip;          /* 4, 6, or 0 (not IP, or too short for its fixed header) */
    uint8_t proto;       /* IPv4 protocol / IPv6 next header */
    uint8_t fragment;    /* IPv4: MF set or a fragment offset */
    uint8_t ok;          /* IP lengths fit the frame (IPv4 total length, IPv6 payload length) */
    uint16_t l4;         /* offset of the L4 header */
    uint16_t l4_len;     /* L4 length the IP header claims */
    uint16_t tags;       /* VLAN tags skipped */
    uint16_t pad;
} vx_l3l4;

/* How the outer IP header's TOS, TTL and DF follow from the inner packet (the kernel's
 * `tos`/`ttl`/`df` settings; ECN is always carried, as the kernel does). */
typedef struct vx_outer {
    uint8_t tos, tos_inherit; /* fixed TOS, or the inner packet's (its ECN bits: always) */
    uint8_t ttl, ttl_inherit; /* fixed TTL (0: the socket's), or the inner packet's */
    uint8_t df, df_inherit;   /* DF set, or the inner IPv4 packet's DF bit */
    uint8_t ecn_decap;        /* receive: RFC 6040 decapsulation of the ECN field */
    uint8_t zero_csum;        /* send: outer UDP checksum 0 (the sockets have SO_NO_CHECK /
                                 UDP_NO_CHECK6_TX): no UDP GSO, which needs checksums; tunnel
                                 GSO packets leave with 0 too */
} vx_outer;

/* Settings of the whole datapath (the engine pushes them when they change). */
typedef struct vx_config {
    uint32_t srcport_lo, srcport_hi; /* outer UDP source ports from the inner-flow hash */
    int32_t strict;                  /* parse: a reserved header bit set is VX_ST_RESERVED */
    int32_t complete_checksums;      /* receive: complete partial inner L4 checksums */
    vx_outer outer;
} vx_config;

/* A segment's rule (the engine installs it). */
typedef struct vx_rule {
    uint32_t tx_up;        /* vx_tx_match bits whose frames go up */
    uint32_t rx_up;        /* vx_rx_match bits whose frames go up */
    uint32_t rx_miss;      /* vx_miss: a received source MAC with no entry */
    uint32_t group_action; /* action for group destinations not in tx_up (0: up) */
    uint32_t rx_from;      /* vx_from: the outer sources C may deliver from */
} vx_rule;

/* An IP prefix: family (AF_INET / AF_INET6), length in bits, address (4 or 16 bytes). */
typedef struct vx_prefix {
    uint16_t family;
    uint8_t len;
    uint8_t pad;
    uint8_t addr[16];
} vx_prefix;

/* Per-segment counters of what C did itself. */
typedef struct vx_seg_counters {
    uint64_t rx_packets, rx_bytes;   /* frames delivered to the device */
    uint64_t tx_packets, tx_bytes;   /* datagrams the kernel took (a copy each), inner bytes */
    uint64_t floods;                 /* group frames replicated by the group action */
    uint64_t tap_write_errors;       /* frames the device refused */
    uint64_t gso_frames;             /* TCP super-frames cut into chunks */
    uint64_t learn_refused;          /* frames from unknown sources delivered, FDB full */
} vx_seg_counters;

/* Datapath-wide counters. */
typedef struct vx_dp_counters {
    uint64_t truncated;            /* datagrams larger than their slot, dropped */
    uint64_t checksums_completed;  /* partial inner checksums completed */
    uint64_t gro_receives;         /* UDP GRO receives of several datagrams */
    uint64_t gro_coalesced;        /* of them merged into one super-frame */
    uint64_t gro_split;            /* of them split into their datagrams */
    uint64_t gro_pending_dropped;  /* datagrams lost waiting when the pump got another batch */
    uint64_t sender_jobs;          /* super-frames sent by the sender thread */
    uint64_t tgso_frames;          /* super-frames sent whole with tunnel GSO */
    uint64_t send_errors[256];     /* datagrams refused, by errno (EAGAIN: socket buffer full) */
    uint64_t tx_batches[11];       /* TAP reads of the pump by size: bucket k, up to 2^k frames */
    uint64_t rx_batches[11];       /* socket receives of the pump by size (datagrams), alike */
    uint64_t tx_batch_frames;      /* frames of those TAP reads, in all */
    uint64_t rx_batch_frames;      /* datagrams of those receives, in all */
} vx_dp_counters;

/* What C sent to and delivered from one remote VTEP (an underlay address, any port): tx as
 * vx_seg_counters counts it, rx the frames delivered from datagrams it sent. The first
 * VX_MAX_PEERS addresses seen are counted one by one; family 0 is the row of all the others. */
typedef struct vx_peer_counters {
    uint16_t family;               /* AF_INET, AF_INET6; 0: the peers past VX_MAX_PEERS */
    uint8_t addr[16];
    uint64_t tx_packets, tx_bytes, rx_packets, rx_bytes;
} vx_peer_counters;

/* What a pump of the datapath thread left for the engine (loop.c). */
typedef struct vx_loop_held {
    int32_t kind;                  /* enum vx_held */
    int32_t vni;                   /* VX_HELD_TX: the TAP's segment */
    int32_t n;                     /* the pump's return value (-errno on error) */
    uint32_t upcalls;              /* slots marked for the engine */
    uint32_t more;                 /* VX_HELD_RX: enum vx_rx_more */
    int64_t gone;                  /* VX_HELD_RX: the VNI whose TAP is gone, else -1 */
} vx_loop_held;

/* --- codec (codec.c): VXLAN header and inner-flow hash --------------------------------- */
uint32_t vx_flow_hash(const uint8_t *frame, uint32_t len);
void vx_encap(vx_batch *b, uint32_t first, uint32_t n, uint32_t lo, uint32_t hi);
void vx_decap(vx_batch *b, uint32_t first, uint32_t n, int strict);
void vx_outer_fields(vx_batch *b, uint32_t first, uint32_t n, const vx_outer *o);
uint32_t vx_ecn_decap(vx_batch *b, uint32_t first, uint32_t n);

/* --- offloads (offload.c, tso.c, gro.c): parse, checksums, virtio-net, TSO, GRO --------- */
int vx_parse(const uint8_t *frame, uint32_t len, vx_l3l4 *out);
uint32_t vx_csum16(const uint8_t *p, size_t n);
uint32_t vx_complete_checksums(vx_batch *b, uint32_t first, uint32_t n);
int vx_vnet_gso(uint8_t *frame, uint32_t len, uint32_t mtu, uint8_t *hdr);
uint32_t vx_tso_cut(const vx_batch *b, uint32_t i, uint32_t gso_size, vx_batch *out,
                    uint32_t first);
uint32_t vx_gro_coalesce(uint8_t *p, uint32_t len, uint32_t seg);

/* --- device and socket I/O (tap.c, udp.c) ---------------------------------------------- */
int vx_tap_read(int fd, uint32_t vnet, vx_batch *b, uint32_t first, uint32_t *completed);
int vx_tap_write(int fd, uint32_t vnet, uint32_t mtu, vx_batch *b, const uint32_t *slots,
                 uint32_t n, uint32_t *errors);
int vx_udp_recv(int fd, vx_batch *b, uint32_t first, uint32_t cap, int gro,
                uint32_t *truncated);
int vx_udp_send(int fd, const vx_batch *b, uint32_t first, uint32_t n, const uint8_t *addr,
                uint32_t addrlen, int32_t *no_gso, const vx_outer *o);
uint32_t vx_super_prepare(const vx_batch *b, uint32_t i, uint32_t vni, vx_batch *out,
                          uint32_t lo, uint32_t hi, const vx_outer *o);
int vx_spin(const int *fds, uint32_t n, uint32_t usec);

/* --- the datapath (table.c, tx.c, rx.c, sender.c) -------------------------------------- */
typedef struct vx_dp vx_dp;
vx_dp *vx_dp_new(uint32_t chunk_max_frame);
void vx_dp_free(vx_dp *dp);
void vx_dp_configure(vx_dp *dp, const vx_config *cfg);
int vx_dp_segment(vx_dp *dp, uint32_t vni, const vx_rule *rule);
int vx_dp_device(vx_dp *dp, uint32_t vni, int tap_fd, uint32_t vnet, uint32_t mtu);
void vx_dp_segment_del(vx_dp *dp, uint32_t vni);
int vx_dp_allow(vx_dp *dp, uint32_t vni, uint32_t n, const vx_prefix *prefixes);
int vx_dp_remote(vx_dp *dp, uint32_t id, const uint8_t *sa, uint32_t salen);
int vx_dp_action(vx_dp *dp, uint32_t id, uint32_t n, const uint32_t *remotes,
                 const uint32_t *vnis);
void vx_dp_port_fd(vx_dp *dp, uint32_t port, uint32_t df, int fd);
void vx_dp_link(vx_dp *dp, int fd, uint32_t ttl);
int vx_dp_remote_link(vx_dp *dp, uint32_t id, const uint8_t *dst_mac, const uint8_t *src_mac,
                      const uint8_t *saddr);
int vx_dp_put(vx_dp *dp, uint32_t vni, const uint8_t *mac, uint32_t action, uint32_t flags,
              uint64_t seen_ms, uint32_t *old_action);
int vx_dp_del(vx_dp *dp, uint32_t vni, const uint8_t *mac, uint32_t *old_action);
int vx_dp_get(vx_dp *dp, uint32_t vni, const uint8_t *mac, uint32_t *action, uint32_t *flags,
              uint64_t *seen_ms);
uint32_t vx_dp_dump(vx_dp *dp, uint32_t vni, uint8_t *macs, uint32_t *actions,
                    uint32_t *flags, uint64_t *seen_ms, uint32_t cap);
int vx_dp_read_seg_counters(vx_dp *dp, uint32_t vni, vx_seg_counters *out);
void vx_dp_read_counters(vx_dp *dp, vx_dp_counters *out);
uint32_t vx_dp_read_peers(vx_dp *dp, vx_peer_counters *out, uint32_t cap);
int vx_tx_classify(vx_dp *dp, uint32_t vni, vx_batch *b, uint32_t first, uint32_t n);
int vx_tx_pump(vx_dp *dp, uint32_t vni, vx_batch *b, uint32_t rounds, uint32_t *upcalls);
int vx_rx_classify(vx_dp *dp, vx_batch *b, uint32_t first, uint32_t n, uint64_t now_ms);
int vx_rx_pump(vx_dp *dp, int fd, vx_batch *b, uint64_t now_ms, uint32_t rounds,
               uint32_t spill, uint32_t *out, int64_t *gone_vni);
int vx_sender_start(vx_dp *dp);
int64_t vx_sender_sent(vx_dp *dp);
void vx_sender_drain(vx_dp *dp);

/* --- the datapath thread (loop.c) ------------------------------------------------------ */
int vx_loop_start(vx_dp *dp, const int *tap_fds, const uint32_t *vnis, uint32_t ntaps,
                  int udp_fd, vx_batch *txb, vx_batch *rxb, uint32_t rounds, uint32_t spill,
                  uint32_t busy_us, uint32_t adapt_us);
int vx_loop_running(vx_dp *dp);
int vx_loop_notify_fd(vx_dp *dp);
int vx_loop_held_get(vx_dp *dp, vx_loop_held *out);
void vx_loop_release(vx_dp *dp);
void vx_loop_pause(vx_dp *dp);
void vx_loop_resume(vx_dp *dp);
void vx_loop_stop(vx_dp *dp);

#endif
