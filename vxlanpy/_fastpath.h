/*
 * vxlanpy fast path: every C function Python calls, in one place. The C files include it, so
 * the compiler holds each definition to its declaration; _build_fastpath.py hands the same text
 * to cffi as its cdef (lines starting with '#' removed), so Python sees exactly these.
 */
#ifndef VXLANPY_FASTPATH_H
#define VXLANPY_FASTPATH_H
#include <stddef.h>
#include <stdint.h>

/* batch kernels (_fastpath.c) */
uint32_t vx_flow_hash(const uint8_t *frame, uint32_t len);
uint32_t vx_csum16(const uint8_t *p, size_t n); /* one's-complement sum, folded, big-endian */
void vx_encap_batch(uint8_t *buf, uint32_t slot, uint32_t headroom, uint32_t n,
                    const uint32_t *frame_len, const uint32_t *vni, uint32_t *payload_len,
                    uint16_t *sport, uint32_t lo, uint32_t hi);
void vx_decap_batch(const uint8_t *buf, uint32_t slot, uint32_t headroom, uint32_t n,
                    const uint32_t *payload_len, int strict, uint32_t *vni, int32_t *status,
                    uint32_t *frame_len);
uint32_t vx_complete_checksums(uint8_t *buf, uint32_t slot, uint32_t headroom, uint32_t n,
                               const uint32_t *frame_len);
uint32_t vx_tso_segment(const uint8_t *f, uint32_t len, uint32_t gso_size, uint32_t vni,
                        uint8_t *out, uint32_t slot, uint32_t headroom, uint32_t max_frame,
                        uint32_t first, uint32_t capacity, uint32_t *frame_len,
                        uint32_t *vni_out);

/* receive coalescing of a UDP GRO buffer (_fastgro.c) */
uint32_t vx_gro_coalesce(uint8_t *p, uint32_t len, uint32_t seg);

/* batched syscalls (_fastio.c) */
int vx_send_batch(int fd, uint8_t *buf, uint32_t slot, uint32_t headroom, uint32_t first,
                  uint32_t n, const uint32_t *payload_len, const void *addr, uint32_t addrlen);
int vx_send_gso(int fd, uint8_t *buf, uint32_t slot, uint32_t headroom, uint32_t first,
                uint32_t n, const uint32_t *payload_len, const void *addr, uint32_t addrlen);
int vx_tap_write(int fd, uint8_t *buf, uint32_t slot, uint32_t headroom, const uint32_t *slots,
                 uint32_t n, const uint32_t *frame_len, uint32_t vnet, uint32_t mtu,
                 uint32_t *errors);
int vx_recv_batch(int fd, uint8_t *buf, uint32_t slot, uint32_t headroom, uint32_t first,
                  uint32_t cap, uint32_t max_payload, uint32_t *payload_len, uint8_t *addrs,
                  uint16_t *gro, uint32_t *truncated);

/* datapath: forwarding cache, classification, pumps (_fastdp.c); vx_batch describes a
 * FrameBatch (batch.py), keep the two in step */
typedef struct vx_batch {
    uint8_t *buf;
    uint32_t slot, headroom, capacity, max_frame;
    uint32_t *frame_len, *payload_len, *vni;
    int32_t *status;
    uint16_t *sport;
    uint8_t *gso_type;
    uint16_t *gso_size;
    uint8_t *vnet_flags;
    int32_t *action;
    uint8_t *addrs;
    uint32_t *order; /* receive pump: the slots it filled, in the order they came off the wire */
} vx_batch;
typedef struct vx_dp vx_dp;
vx_dp *vx_dp_new(uint32_t lo, uint32_t hi, int strict, int complete_checksums);
void vx_dp_free(vx_dp *dp);
int vx_dp_seg_set(vx_dp *dp, uint32_t vni, int tap_fd, uint32_t vnet, uint32_t mtu,
                  const uint8_t *local_mac, uint32_t flags);
void vx_dp_seg_del(vx_dp *dp, uint32_t vni);
int vx_dp_remote_set(vx_dp *dp, uint32_t id, const uint8_t *sa, uint32_t salen);
void vx_dp_port_fd(vx_dp *dp, uint32_t port, int fd);
int vx_dp_put(vx_dp *dp, uint32_t vni, const uint8_t *mac, uint32_t remote, uint32_t flags,
              uint64_t seen_ms);
int vx_dp_del(vx_dp *dp, uint32_t vni, const uint8_t *mac);
int vx_dp_get(vx_dp *dp, uint32_t vni, const uint8_t *mac, uint32_t *remote, uint32_t *flags,
              uint64_t *seen_ms);
uint32_t vx_dp_dump(vx_dp *dp, uint32_t vni, uint8_t *macs, uint32_t *remote, uint32_t *flags,
                    uint64_t *seen_ms, uint32_t cap);
int vx_dp_counters(vx_dp *dp, uint32_t vni, uint64_t *out);
void vx_dp_global(vx_dp *dp, uint64_t *truncated, uint64_t *checksums, uint64_t *send_err,
                  uint64_t *gro);
int vx_dp_tx_classify(vx_dp *dp, uint32_t vni, vx_batch *b, uint32_t first, uint32_t n);
int vx_dp_rx_classify(vx_dp *dp, vx_batch *b, uint32_t first, uint32_t n, uint64_t now_ms);
int vx_dp_sender_start(vx_dp *dp, uint32_t slot, uint32_t headroom, uint32_t max_frame,
                       uint32_t capacity);
int64_t vx_dp_sender_sent(vx_dp *dp);
int vx_dp_tx_pump(vx_dp *dp, uint32_t vni, vx_batch *b, vx_batch *sb, uint32_t rounds,
                  uint32_t *upcalls);
int vx_dp_rx_pump(vx_dp *dp, int fd, vx_batch *b, uint64_t now_ms, uint32_t rounds,
                  uint32_t spill, uint32_t *out, int64_t *gone_vni);
int vx_dp_spin(const int *fds, uint32_t n, uint32_t usec);

#endif
