"""Pure-Python twin of the offload unit (csrc/offload.c, tso.c, gro.c): checksum completion and
verification, the virtio-net GSO header, TSO cutting and GRO coalescing, through the one header
parse of headers.py. Same contracts and bytes as the C kernels (kernels.py documents them).

One's-complement arithmetic by way of big integers: a byte string read as a big-endian integer
N is congruent, modulo 0xFFFF, to the sum of its 16-bit words (65536 = 1 mod 0xFFFF). Every sum
here includes the protocol number, so it is positive and folds to 1..0xFFFF, never 0: the fold
is ``N % 0xFFFF or 0xFFFF``, exactly what the C kernels' end-around carry gives.
"""

from __future__ import annotations

import struct

from ._codec_py import check_batch
from .abi import Gso, Offload
from .batch import FrameBatch
from .headers import L3L4, parse
from .wire import ETH_HLEN, VXLAN_HLEN

__all__ = [
    "parse",
    "complete_checksums",
    "complete_frame",
    "vnet_gso",
    "tso_segment",
    "gro_coalesce",
    "check_tso",
    "check_gro",
]

_TCP_FIN, _TCP_PSH, _TCP_ACK, _TCP_CWR = 0x01, 0x08, 0x10, 0x80
_VNET = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
CSUM_NONE, CSUM_VALID, CSUM_COMPLETED = 0, 1, 2


def _fold(n: int) -> int:
    return n % 0xFFFF or 0xFFFF


def _words(b: bytes | bytearray | memoryview) -> int:
    """The integer whose fold is the one's-complement sum of ``b`` (odd length padded)."""
    v = int.from_bytes(b)
    return v << 8 if len(b) & 1 else v


def _pseudo(f: bytes | bytearray | memoryview, h: L3L4) -> int:
    """The pseudo-header sum (addresses and protocol; without the L4 length)."""
    lo, hi = (h.l3 + 12, h.l3 + 20) if h.ip == 4 else (h.l3 + 8, h.l3 + 40)
    return int.from_bytes(f[lo:hi]) + h.proto


def complete_frame(f: memoryview) -> int:
    """The C ``complete_one`` for the frame ``f``: CSUM_VALID, CSUM_COMPLETED or CSUM_NONE."""
    h = parse(f)
    if not h.ip or h.tags or not h.ok or h.fragment:
        return CSUM_NONE
    if h.proto == 6:
        hlen, coff = 20, 16
    elif h.proto == 17:
        hlen, coff = 8, 6
    else:
        return CSUM_NONE
    if h.l4_len < hlen:
        return CSUM_NONE
    l4 = h.l4
    pseudo = _pseudo(f, h) + h.l4_len
    field = (f[l4 + coff] << 8) | f[l4 + coff + 1]
    if h.ip == 4 and h.proto == 17 and field == 0:  # UDP over IPv4 without a checksum
        return CSUM_NONE
    total = pseudo + _words(f[l4 : l4 + h.l4_len])
    if total % 0xFFFF == 0:  # verifies (folds to 0xFFFF)
        return CSUM_VALID
    if field != _fold(pseudo):  # not the partial state: a wrong checksum, not ours to fix
        return CSUM_NONE
    csum = 0xFFFF - _fold(total - field)
    if h.proto == 17 and csum == 0:
        csum = 0xFFFF
    f[l4 + coff] = csum >> 8
    f[l4 + coff + 1] = csum & 0xFF
    return CSUM_COMPLETED


def complete_checksums(batch: FrameBatch) -> int:
    """Complete partial TCP/UDP checksums of the inner frames (skipping coalesced ones), mark
    those that verify ``Offload.CSUM_OK``; return how many were rewritten."""
    check_batch(batch)
    view = memoryview(batch.buf)
    limit = batch.slot - batch.headroom
    fixed = 0
    for i in range(batch.count):
        if batch.offload[i] & Offload.COALESCED:
            continue
        batch.offload[i] &= ~Offload.CSUM_OK & 0xFF
        n = batch.frame_len[i]
        if not ETH_HLEN <= n <= limit:
            continue
        off = batch.frame_offset(i)
        r = complete_frame(view[off : off + n])
        if r != CSUM_NONE:
            batch.offload[i] |= Offload.CSUM_OK
        fixed += r == CSUM_COMPLETED
    return fixed


def vnet_gso(buf: bytearray, off: int, length: int, mtu: int, hoff: int) -> bool:
    """Twin of vx_vnet_gso: a GSO virtio-net header at ``buf[hoff:]`` for the (verified)
    oversized TCP frame ``buf[off:off+length]``, and the pseudo-header sum in its checksum
    field; False (nothing written) for anything else."""
    f = memoryview(buf)[off : off + length]
    h = parse(f)
    if length < ETH_HLEN + 40 or not h.ip or h.tags or not h.ok or h.fragment:
        return False
    if h.proto != 6 or h.l4_len < 20:
        return False
    iphl, thl = h.l4 - h.l3, (f[h.l4 + 12] >> 4) * 4
    if thl < 20 or thl > h.l4_len or mtu <= iphl + thl:
        return False
    mss = mtu - iphl - thl
    if h.l4_len - thl <= mss or mss > 0xFFFF:
        return False
    struct.pack_into("!H", buf, off + h.l4 + 16, _fold(_pseudo(f, h) + h.l4_len))
    gso = Gso.TCPV4 if h.ip == 4 else Gso.TCPV6
    _VNET.pack_into(buf, hoff, 1, gso, h.l4 + thl, mss, h.l4, 16)
    return True


# --- TSO: cutting a TCP super-frame into chunks ----------------------------------------------


def check_tso(batch: FrameBatch, src: int, gso_size: int, out: FrameBatch) -> None:
    """Refuse a source slot not in use or a ``gso_size`` that is not a virtio 16-bit size."""
    check_batch(batch)
    check_batch(out)
    if not 0 <= src < batch.count:
        raise ValueError(f"source slot {src} outside 0..{batch.count - 1}")
    if not 0 <= gso_size <= 0xFFFF:
        raise ValueError(f"gso_size must satisfy 0 <= gso_size <= 65535, got {gso_size}")


def tso_segment(batch: FrameBatch, src: int, gso_size: int, out: FrameBatch) -> int:
    """Cut the TCP super-frame in slot ``src`` into chunks appended to ``out`` (kernels.py)."""
    check_tso(batch, src, gso_size, out)
    n = batch.frame_len[src]
    if n > batch.slot - batch.headroom or gso_size == 0:  # a corrupt length: unreadable
        return 0
    off = batch.frame_offset(src)
    frame = bytes(memoryview(batch.buf)[off : off + n])
    h = parse(frame)
    if not h.ip or h.tags or not h.ok or h.fragment or h.proto != 6 or h.l4_len < 20:
        return 0
    v4, ip, th = h.ip == 4, h.l3, h.l4
    iphl, thl = th - ip, (frame[th + 12] >> 4) * 4
    if thl < 20 or thl >= h.l4_len:  # no payload: nothing to cut
        return 0
    plen = h.l4_len - thl
    count = -(-plen // gso_size)
    hlen = th + thl
    first = out.count
    if count > out.capacity - first or hlen + min(gso_size, plen) > out.max_frame:
        return 0
    hdr = bytearray(frame[:hlen])
    payload = frame[hlen : hlen + plen]
    ip_id = (frame[ip + 4] << 8) | frame[ip + 5]  # IPv4 identification (unused for IPv6)
    seq = int.from_bytes(frame[th + 4 : th + 8])
    flags = frame[th + 13]
    pseudo = _pseudo(frame, h)
    vni = batch.vni[src]
    for k in range(count):
        chunk = payload[k * gso_size : (k + 1) * gso_size]
        l4len = thl + len(chunk)
        if v4:
            struct.pack_into("!HH", hdr, ip + 2, iphl + l4len, (ip_id + k) & 0xFFFF)
            struct.pack_into("!H", hdr, ip + 10, 0)
            struct.pack_into("!H", hdr, ip + 10, 0xFFFF - _fold(int.from_bytes(hdr[ip:th])))
        else:
            struct.pack_into("!H", hdr, ip + 4, l4len)
        fl = flags
        if k:
            fl &= ~_TCP_CWR
        if k != count - 1:
            fl &= ~(_TCP_FIN | _TCP_PSH)
        struct.pack_into("!I", hdr, th + 4, (seq + k * gso_size) & 0xFFFFFFFF)
        hdr[th + 13] = fl
        struct.pack_into("!H", hdr, th + 16, 0)
        segment = _words(hdr[th:] + chunk)
        struct.pack_into("!H", hdr, th + 16, 0xFFFF - _fold(pseudo + l4len + segment))
        i = first + k
        doff = out.frame_offset(i)
        out.buf[doff : doff + hlen] = hdr
        out.buf[doff + hlen : doff + hlen + len(chunk)] = chunk
        out.frame_len[i] = hlen + len(chunk)
        out.vni[i] = vni
    out.count = first + count
    return count


# --- GRO: coalescing a UDP GRO receive into one TCP super-frame ------------------------------


def check_gro(buf: bytearray, length: int, seg: int) -> None:
    """Refuse a ``length`` past the end of ``buf`` (C would read and write past it) or a ``seg``
    that is not a 32-bit size."""
    if not 0 <= length <= len(buf):
        raise ValueError(f"length must satisfy 0 <= length <= {len(buf)}, got {length}")
    if not 0 <= seg <= 0xFFFFFFFF:
        raise ValueError(f"seg must satisfy 0 <= seg <= 2**32 - 1, got {seg}")


def gro_coalesce(buf: bytearray, length: int, seg: int) -> int:
    """Coalesce the VXLAN datagrams in ``buf[:length]`` into one TCP super-frame in place; return
    its length, or 0 with ``buf`` untouched (kernels.py)."""
    check_gro(buf, length, seg)
    hdrs = VXLAN_HLEN + ETH_HLEN
    if seg < hdrs + 20 + 20 or length <= seg:
        return 0
    h = parse(memoryview(buf)[VXLAN_HLEN:seg])  # the first datagram's: the others repeat it
    if not h.ip or h.tags or h.fragment or h.proto != 6:
        return 0
    v4 = h.ip == 4
    iphl = h.l4 - h.l3
    if v4 and iphl < 20:
        return 0
    ip, th = VXLAN_HLEN + h.l3, VXLAN_HLEN + h.l4
    pseudo = _pseudo(memoryview(buf)[VXLAN_HLEN:], h)
    if th + 20 > seg:
        return 0
    thl = (buf[th + 12] >> 4) * 4
    hlen = th + thl
    if thl < 20 or hlen >= seg:
        return 0
    # Every datagram but the last is seg bytes with headers of one size: their payloads all have
    # the first one's length, the MSS, and the last's is at most that.
    n = -(-length // seg)
    mss = seg - hlen
    last_len = length - (n - 1) * seg
    if last_len <= hlen:
        return 0
    total = (n - 1) * mss + last_len - hlen
    if (iphl if v4 else 0) + thl + total > 0xFFFF:
        return 0
    seq = int.from_bytes(buf[th + 4 : th + 8])
    flags = 0
    payloads = []
    for i in range(n):
        d = i * seg
        dip, dth = d + ip, d + th
        dlen = seg if i + 1 < n else last_len
        l4len = dlen - th
        if buf[d : d + hdrs] != buf[:hdrs]:
            return 0
        if v4:
            # all but total length, id and checksum; the checksum must verify
            if (
                buf[dip : dip + 2] != buf[ip : ip + 2]
                or buf[dip + 6 : dip + 10] != buf[ip + 6 : ip + 10]
                or buf[dip + 12 : dip + iphl] != buf[ip + 12 : ip + iphl]
                or (buf[dip + 2] << 8) | buf[dip + 3] != iphl + l4len
                or int.from_bytes(buf[dip : dip + iphl]) % 0xFFFF
            ):
                return 0
        elif (
            buf[dip : dip + 4] != buf[ip : ip + 4]
            or buf[dip + 6 : dip + 40] != buf[ip + 6 : ip + 40]
            or (buf[dip + 4] << 8) | buf[dip + 5] != l4len
        ):
            return 0
        # all but seq, flags and checksum
        if (
            buf[dth : dth + 4] != buf[th : th + 4]
            or buf[dth + 8 : dth + 13] != buf[th + 8 : th + 13]
            or buf[dth + 14 : dth + 16] != buf[th + 14 : th + 16]
            or buf[dth + 18 : dth + thl] != buf[th + 18 : th + thl]
        ):
            return 0
        flags = buf[dth + 13]
        if flags != _TCP_ACK and (i + 1 < n or flags != _TCP_ACK | _TCP_PSH):
            return 0
        if int.from_bytes(buf[dth + 4 : dth + 8]) != seq:
            return 0
        if (pseudo + l4len + _words(buf[dth : d + dlen])) % 0xFFFF:
            return 0
        payloads.append(buf[d + hlen : d + dlen])
        seq = (seq + dlen - hlen) & 0xFFFFFFFF
    # Valid: the first datagram's headers, then the payloads; then fix the headers.
    end = hlen + total
    buf[hlen:end] = b"".join(payloads)
    l4len = thl + total
    if v4:
        struct.pack_into("!H", buf, ip + 2, iphl + l4len)
        struct.pack_into("!H", buf, ip + 10, 0)
        struct.pack_into("!H", buf, ip + 10, 0xFFFF - _fold(int.from_bytes(buf[ip:th])))
    else:
        struct.pack_into("!H", buf, ip + 4, l4len)
    buf[th + 13] = flags
    struct.pack_into("!H", buf, th + 16, 0)
    struct.pack_into("!H", buf, th + 16, 0xFFFF - _fold(pseudo + l4len + _words(buf[th:end])))
    return end
