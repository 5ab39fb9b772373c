"""Pure-Python twin of the C fast path: same functions, same signatures, same bytes.

Used when the extension is not built or ``VXLANPY_PURE_PYTHON=1``. The tests run every batch
kernel on both backends and compare the results byte for byte.
"""

from __future__ import annotations

import struct

from .batch import FrameBatch
from .wire import (
    ETH_HLEN,
    ETH_P_IP,
    ETH_P_IPV6,
    VXLAN_FLAG_I,
    VXLAN_HLEN,
    flow_hash,
    port_from_hash,
)

__all__ = [
    "encap_batch",
    "decap_batch",
    "complete_checksums",
    "tso_segment",
    "gro_coalesce",
    "flow_hash",
]

_HDR = struct.Struct("!II")
_FLAGS = VXLAN_FLAG_I << 24


def check_batch(batch: FrameBatch) -> None:
    """Refuse a ``count`` the metadata columns cannot hold (C would write past them)."""
    if not 0 <= batch.count <= batch.capacity:
        raise ValueError(f"batch count {batch.count} outside 0..{batch.capacity}")


def check_port_range(lo: int, hi: int) -> None:
    """Refuse a source-port range that is empty or not made of UDP ports."""
    if not 0 <= lo <= hi <= 0xFFFF:
        raise ValueError(f"source port range must satisfy 0 <= lo <= hi <= 65535, got {lo}..{hi}")


def check_tso(batch: FrameBatch, src: int, gso_size: int, out: FrameBatch) -> None:
    """Refuse a source slot not in use or a ``gso_size`` that is not a virtio 16-bit size."""
    check_batch(batch)
    check_batch(out)
    if not 0 <= src < batch.count:
        raise ValueError(f"source slot {src} outside 0..{batch.count - 1}")
    if not 0 <= gso_size <= 0xFFFF:
        raise ValueError(f"gso_size must satisfy 0 <= gso_size <= 65535, got {gso_size}")


def encap_batch(batch: FrameBatch, lo: int, hi: int) -> None:
    """Write the VXLAN header in front of every frame; set ``payload_len`` and ``sport``."""
    check_batch(batch)
    check_port_range(lo, hi)
    buf = batch.buf
    view = memoryview(buf)
    for i in range(batch.count):
        hoff = batch.header_offset(i)
        flen = batch.frame_len[i]
        if flen > batch.slot - batch.headroom:  # corrupt length: never read past the slot
            batch.payload_len[i] = 0
            batch.sport[i] = lo
            continue
        _HDR.pack_into(buf, hoff, _FLAGS, (batch.vni[i] & 0xFFFFFF) << 8)
        batch.payload_len[i] = flen + VXLAN_HLEN
        foff = hoff + VXLAN_HLEN
        batch.sport[i] = port_from_hash(flow_hash(view[foff : foff + flen]), lo, hi)


def decap_batch(batch: FrameBatch, strict: bool) -> None:
    """Validate every received payload; set ``status``, ``vni`` and ``frame_len``."""
    check_batch(batch)
    buf = batch.buf
    for i in range(batch.count):
        hoff = batch.header_offset(i)
        n = batch.payload_len[i]
        if n > batch.slot - batch.headroom + VXLAN_HLEN:  # corrupt length: unreadable
            n = 0
        vni = 0
        flen = 0
        if n < VXLAN_HLEN:
            st = 1
        else:
            w0, w1 = _HDR.unpack_from(buf, hoff)
            if not (w0 >> 24) & VXLAN_FLAG_I:
                st = 2
            elif strict and (w0 != _FLAGS or w1 & 0xFF):
                st = 3
            elif n - VXLAN_HLEN < ETH_HLEN:
                st = 4
            else:
                st = 0
                vni = w1 >> 8
                flen = n - VXLAN_HLEN
        batch.status[i] = st
        batch.vni[i] = vni
        batch.frame_len[i] = flen


# --- Receive path: complete CHECKSUM_PARTIAL TCP/UDP checksums ---------------------------------
# One's-complement arithmetic by way of big integers: a byte string read as a big-endian integer
# N is congruent, modulo 0xFFFF, to the sum of its 16-bit words (65536 = 1 mod 0xFFFF). Every sum
# here includes the protocol number, so it is positive and folds to 1..0xFFFF, never 0: the fold
# is ``N % 0xFFFF or 0xFFFF``, exactly what the C kernel's end-around carry gives.


def _fold(n: int) -> int:
    return n % 0xFFFF or 0xFFFF


def _complete_one(view: memoryview, off: int, n: int) -> bool:
    """The C ``complete_one`` for the frame at ``view[off : off + n]`` (``n >= 14``)."""
    et = (view[off + 12] << 8) | view[off + 13]
    ip = off + ETH_HLEN
    avail = n - ETH_HLEN
    if et == ETH_P_IP:
        if avail < 20 or view[ip] >> 4 != 4:
            return False
        ihl = (view[ip] & 0x0F) * 4
        tot = (view[ip + 2] << 8) | view[ip + 3]
        if ihl < 20 or tot > avail or tot < ihl:
            return False
        if ((view[ip + 6] << 8) | view[ip + 7]) & 0x3FFF:  # MF set or offset: a fragment
            return False
        proto = view[ip + 9]
        l4 = ip + ihl
        l4len = tot - ihl
        pseudo = int.from_bytes(view[ip + 12 : ip + 20]) + proto + l4len
        v4 = True
    elif et == ETH_P_IPV6:
        if avail < 40 or view[ip] >> 4 != 6:
            return False
        proto = view[ip + 6]
        l4len = (view[ip + 4] << 8) | view[ip + 5]
        if l4len > avail - 40:
            return False
        l4 = ip + 40
        pseudo = int.from_bytes(view[ip + 8 : ip + 40]) + proto + l4len
        v4 = False
    else:
        return False
    if proto == 6:
        hlen, coff = 20, 16
    elif proto == 17:
        hlen, coff = 8, 6
    else:
        return False
    if l4len < hlen:
        return False
    field = (view[l4 + coff] << 8) | view[l4 + coff + 1]
    if v4 and proto == 17 and field == 0:  # UDP over IPv4 without a checksum
        return False
    segment = int.from_bytes(view[l4 : l4 + l4len])
    if l4len & 1:
        segment <<= 8  # an odd last byte is the high half of a word
    total = pseudo + segment
    if total % 0xFFFF == 0:  # already verifies (folds to 0xFFFF)
        return False
    if field != _fold(pseudo):  # not the partial state: a wrong checksum, not ours to fix
        return False
    csum = 0xFFFF - _fold(total - field)
    if proto == 17 and csum == 0:
        csum = 0xFFFF
    view[l4 + coff] = csum >> 8
    view[l4 + coff + 1] = csum & 0xFF
    return True


def complete_checksums(batch: FrameBatch) -> int:
    """Complete partial TCP/UDP checksums of the inner frames; return how many were rewritten."""
    check_batch(batch)
    view = memoryview(batch.buf)
    limit = batch.slot - batch.headroom
    fixed = 0
    for i in range(batch.count):
        n = batch.frame_len[i]
        if ETH_HLEN <= n <= limit and _complete_one(view, batch.frame_offset(i), n):
            fixed += 1
    return fixed


# --- Transmit path: TCP segmentation of a GSO super-frame (TSO) -------------------------------

_TCP_FIN = 0x01
_TCP_PSH = 0x08
_TCP_CWR = 0x80


def _tso_layout(frame: bytes) -> tuple[bool, int, int, int] | None:
    """(IPv4?, IP header length, TCP header length, TCP payload length) of a segmentable frame:
    untagged Ethernet, IPv4 (not a fragment) or IPv6 (next header TCP), TCP, payload not empty."""
    n = len(frame)
    if n < ETH_HLEN + 20:
        return None
    et = (frame[12] << 8) | frame[13]
    ip = ETH_HLEN
    avail = n - ETH_HLEN
    if et == ETH_P_IP:
        if frame[ip] >> 4 != 4 or frame[ip + 9] != 6:
            return None
        iphl = (frame[ip] & 0x0F) * 4
        iplen = (frame[ip + 2] << 8) | frame[ip + 3]
        if iphl < 20 or iplen > avail or iplen < iphl:
            return None
        if ((frame[ip + 6] << 8) | frame[ip + 7]) & 0x3FFF:  # MF set or offset: a fragment
            return None
        v4 = True
    elif et == ETH_P_IPV6:
        if avail < 40 or frame[ip] >> 4 != 6 or frame[ip + 6] != 6:
            return None
        iphl = 40
        iplen = 40 + ((frame[ip + 4] << 8) | frame[ip + 5])
        if iplen > avail:
            return None
        v4 = False
    else:
        return None
    tcplen = iplen - iphl
    if tcplen < 20:
        return None
    thl = (frame[ip + iphl + 12] >> 4) * 4
    if thl < 20 or thl > tcplen or thl == tcplen:  # no payload: nothing to segment
        return None
    return v4, iphl, thl, tcplen - thl


def tso_segment(batch: FrameBatch, src: int, gso_size: int, out: FrameBatch) -> int:
    """Segment the TCP super-frame in slot ``src`` into ``out`` (see kernels.py)."""
    check_tso(batch, src, gso_size, out)
    n = batch.frame_len[src]
    if n > batch.slot - batch.headroom:  # a corrupt length: unreadable
        return 0
    if gso_size == 0:
        return 0
    off = batch.frame_offset(src)
    frame = bytes(memoryview(batch.buf)[off : off + n])
    layout = _tso_layout(frame)
    if layout is None:
        return 0
    v4, iphl, thl, plen = layout
    count = -(-plen // gso_size)
    ip = ETH_HLEN
    th = ip + iphl
    hlen = th + thl
    first = out.count
    if count > out.capacity - first or hlen + min(gso_size, plen) > out.max_frame:
        return 0
    hdr = bytearray(frame[:hlen])
    payload = frame[hlen : hlen + plen]
    ip_id = (frame[ip + 4] << 8) | frame[ip + 5]  # IPv4 identification (unused for IPv6)
    seq = int.from_bytes(frame[th + 4 : th + 8])
    flags = frame[th + 13]
    if v4:
        pseudo = int.from_bytes(frame[ip + 12 : ip + 20]) + 6
    else:
        pseudo = int.from_bytes(frame[ip + 8 : ip + 40]) + 6
    vni = batch.vni[src]
    for k in range(count):
        chunk = payload[k * gso_size : (k + 1) * gso_size]
        l4len = thl + len(chunk)
        if v4:
            struct.pack_into("!HH", hdr, ip + 2, iphl + l4len, (ip_id + k) & 0xFFFF)
            struct.pack_into("!H", hdr, ip + 10, 0)
            csum = 0xFFFF - _fold(int.from_bytes(hdr[ip:th]))
            struct.pack_into("!H", hdr, ip + 10, csum)
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
        segment = int.from_bytes(hdr[th:] + chunk)
        if len(chunk) & 1:
            segment <<= 8  # an odd last byte is the high half of a word
        struct.pack_into("!H", hdr, th + 16, 0xFFFF - _fold(pseudo + l4len + segment))
        i = first + k
        doff = out.frame_offset(i)
        out.buf[doff : doff + hlen] = hdr
        out.buf[doff + hlen : doff + hlen + len(chunk)] = chunk
        out.frame_len[i] = hlen + len(chunk)
        out.vni[i] = vni
    out.count = first + count
    return count


# --- Receive path: coalescing a UDP GRO receive into one TCP super-frame (GRO) ---------------

_TCP_ACK = 0x10


def check_gro(buf: bytearray, length: int, seg: int) -> None:
    """Refuse a ``length`` past the end of ``buf`` (C would read and write past it) or a ``seg``
    that is not a 32-bit size."""
    if not 0 <= length <= len(buf):
        raise ValueError(f"length must satisfy 0 <= length <= {len(buf)}, got {length}")
    if not 0 <= seg <= 0xFFFFFFFF:
        raise ValueError(f"seg must satisfy 0 <= seg <= 2**32 - 1, got {seg}")


def gro_coalesce(buf: bytearray, length: int, seg: int) -> int:
    """Coalesce the VXLAN datagrams in ``buf[:length]`` into one TCP super-frame in place; return
    its length, or 0 with ``buf`` untouched (see kernels.py)."""
    check_gro(buf, length, seg)
    hdrs = VXLAN_HLEN + ETH_HLEN
    if seg < hdrs + 20 + 20 or length <= seg:
        return 0
    ip = hdrs
    et = (buf[VXLAN_HLEN + 12] << 8) | buf[VXLAN_HLEN + 13]
    # Checked on the first datagram only: the others must repeat these bytes.
    if et == ETH_P_IP:
        iphl = (buf[ip] & 0x0F) * 4
        if buf[ip] >> 4 != 4 or iphl < 20 or buf[ip + 9] != 6:
            return 0
        if ((buf[ip + 6] << 8) | buf[ip + 7]) & 0x3FFF:  # MF set or offset: a fragment
            return 0
        pseudo = int.from_bytes(buf[ip + 12 : ip + 20]) + 6
        v4 = True
    elif et == ETH_P_IPV6:
        if buf[ip] >> 4 != 6 or buf[ip + 6] != 6:  # extension headers are not coalesced
            return 0
        iphl = 40
        pseudo = int.from_bytes(buf[ip + 8 : ip + 40]) + 6
        v4 = False
    else:
        return 0
    if hdrs + iphl + 20 > seg:
        return 0
    th = ip + iphl
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
        dip = d + ip
        dth = d + th
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
        segment = int.from_bytes(buf[dth : d + dlen])
        if l4len & 1:
            segment <<= 8  # an odd last byte is the high half of a word
        if (pseudo + l4len + segment) % 0xFFFF:
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
    segment = int.from_bytes(buf[th:end])
    if l4len & 1:
        segment <<= 8  # an odd last byte is the high half of a word
    struct.pack_into("!H", buf, th + 16, 0xFFFF - _fold(pseudo + l4len + segment))
    return end
