"""Pure-Python twin of csrc/codec.c: VXLAN encapsulation and decapsulation of a batch in place.

Same contract and bytes as the C kernels (kernels.py documents them); the tests run both.
"""

from __future__ import annotations

import struct

from .abi import Status
from .batch import FrameBatch
from .wire import ETH_HLEN, VXLAN_FLAG_I, VXLAN_HLEN, flow_hash, port_from_hash

__all__ = ["encap_batch", "decap_batch", "check_batch", "check_port_range"]

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
            st = Status.TOO_SHORT
        else:
            w0, w1 = _HDR.unpack_from(buf, hoff)
            if not (w0 >> 24) & VXLAN_FLAG_I:
                st = Status.NO_I_FLAG
            elif strict and (w0 != _FLAGS or w1 & 0xFF):
                st = Status.RESERVED
            elif n - VXLAN_HLEN < ETH_HLEN:
                st = Status.INNER_TOO_SHORT
            else:
                st = Status.OK
                vni = w1 >> 8
                flen = n - VXLAN_HLEN
        batch.status[i] = st
        batch.vni[i] = vni
        batch.frame_len[i] = flen
