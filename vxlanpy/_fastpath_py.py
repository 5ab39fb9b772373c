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

__all__ = ["encap_batch", "decap_batch", "complete_checksums", "flow_hash"]

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
