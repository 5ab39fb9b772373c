"""Pure-Python twin of the C fast path: same functions, same signatures, same bytes.

Used when the extension is not built or ``VXLANPY_PURE_PYTHON=1``. The tests run every batch
kernel on both backends and compare the results byte for byte.
"""

from __future__ import annotations

import struct

from .batch import FrameBatch
from .wire import (
    ETH_HLEN,
    VXLAN_FLAG_I,
    VXLAN_HLEN,
    flow_hash,
    port_from_hash,
)

__all__ = ["encap_batch", "decap_batch", "flow_hash"]

_HDR = struct.Struct("!II")
_FLAGS = VXLAN_FLAG_I << 24


def encap_batch(batch: FrameBatch, lo: int, hi: int) -> None:
    """Write the VXLAN header in front of every frame; set ``payload_len`` and ``sport``."""
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
