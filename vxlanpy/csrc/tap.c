/*
 * TAP device I/O in batches, with the virtio-net header (IFF_VNET_HDR) read and written here
 * so that nothing above sees it: a read gives frames with their offload state (partial
 * checksums completed, TCP super-frames marked with their GSO type and size), a write gives
 * a super-frame its GSO header. The Python Tap (io/tap.py) and the C pumps both use these;
 * the pure-Python twin is io/batchio.py.
 */
#include <unistd.h>

#include "vx_internal.h"

/*
 * Read frames from the TAP fd into slots first.. until it would block or the batch is full
 * (vx_tap_read_upto: or slot `last` is reached).
 * With vnet (the header's size, 0 or >= 10), the header goes into the headroom in front of
 * each frame and sets gso_type, gso_size and offload (VX_OFF_NEEDS_CSUM); the partial checksum
 * of a plain frame is completed at once (*completed counts them), a super-frame's chunks get
 * theirs when it is cut. Returns frames read, or -errno if the device is gone.
 */
int vx_tap_read_upto(int fd, uint32_t vnet, vx_batch *b, uint32_t first, uint32_t last,
                     uint32_t *completed)
{
    uint32_t i = first;
    if (vnet > b->headroom || (vnet && vnet < VX_VNET_HLEN))
        return -EINVAL;
    if (last > b->capacity)
        last = b->capacity;
    while (i < last) {
        uint8_t *p = vx_frame(b, i) - vnet;
        ssize_t r = read(fd, p, b->max_frame + vnet);
        if (r < 0) {
            if (vx_gone(errno))
                return -errno;
            break; /* EAGAIN, EINTR, or anything else: again on the next readiness */
        }
        if ((uint32_t)r <= vnet)
            break;
        b->offload[i] = b->gso_type[i] = 0;
        b->gso_size[i] = 0;
        b->frame_len[i] = (uint32_t)r - vnet;
        if (vnet) {
            uint16_t gso_size;
            memcpy(&gso_size, p + 4, 2);
            b->gso_type[i] = p[1];
            b->gso_size[i] = gso_size;
            if (p[0] & VX_VNET_F_NEEDS_CSUM) {
                b->offload[i] = VX_OFF_NEEDS_CSUM;
                if (!p[1])
                    *completed += vx_complete_checksums(b, i, 1);
            }
        }
        i++;
    }
    return (int)(i - first);
}

int vx_tap_read(int fd, uint32_t vnet, vx_batch *b, uint32_t first, uint32_t *completed)
{
    return vx_tap_read_upto(fd, vnet, b, first, b->capacity, completed);
}

/*
 * Write the frames of slots[0..n) to the TAP fd. With vnet, a virtio-net header goes in the
 * headroom in front of each frame (over the VXLAN header, parsed already): zero, or, for a TCP
 * frame longer than mtu + 14 whose checksum was verified (VX_OFF_CSUM_OK or VX_OFF_COALESCED),
 * a GSO header (vx_vnet_gso). An unverified one goes as it is: a wrong checksum stays wrong.
 * A frame the device refuses is counted in *errors and skipped; an error that means the
 * device is gone stops the loop and is returned as -errno. Otherwise returns frames written.
 */
int vx_tap_write(int fd, uint32_t vnet, uint32_t mtu, vx_batch *b, const uint32_t *slots,
                 uint32_t n, uint32_t *errors)
{
    int written = 0;
    if (vnet > b->headroom || (vnet && vnet < VX_VNET_HLEN))
        return -EINVAL;
    for (uint32_t j = 0; j < n; j++) {
        uint32_t i = slots[j];
        if (i >= b->capacity)
            return -EINVAL;
        uint8_t *f = vx_frame(b, i), *p = f - vnet;
        uint32_t len = b->frame_len[i];
        if (len > b->slot - b->headroom) { /* corrupt length: never read past the slot */
            (*errors)++;
            continue;
        }
        if (vnet) {
            memset(p, 0, vnet);
            if (mtu && len > mtu + VX_ETH_HLEN
                && (b->offload[i] & (VX_OFF_CSUM_OK | VX_OFF_COALESCED)))
                vx_vnet_gso(f, len, mtu, p);
        }
        ssize_t r = write(fd, p, len + vnet);
        if (r < 0) {
            int e = errno;
            if (vx_gone(e))
                return -e;
            (*errors)++;
            continue;
        }
        written++;
    }
    return written;
}
