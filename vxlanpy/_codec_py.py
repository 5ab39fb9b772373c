"""Pure-Python twin of csrc/codec.c: VXLAN encapsulation and decapsulation of a batch in place.

Same contract and bytes as the C kernels (kernels.py documents them); the tests run both.
"""

from __future__ import annotations

import struct

from .abi import GBP_A, GBP_D, GBP_G, Status, Strict
from .batch import FrameBatch
from .headers import Outer, parse
from .wire import ETH_HLEN, VXLAN_FLAG_I, VXLAN_HLEN, flow_hash, port_from_hash

__all__ = [
    "encap_batch",
    "decap_batch",
    "outer_fields",
    "ecn_decap",
    "check_batch",
    "check_port_range",
]

_HDR = struct.Struct("!II")
_FLAGS = VXLAN_FLAG_I << 24
_GBP_WORD0 = (GBP_G | VXLAN_FLAG_I) << 24 | (GBP_D | GBP_A) << 16 | 0xFFFF


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


def _reserved_set(w0: int, w1: int, strict: int) -> bool:
    if strict == Strict.GBP:  # G, D, A and the group policy ID are not reserved
        return bool(w0 & ~_GBP_WORD0) or bool(w1 & 0xFF)
    return w0 != _FLAGS or bool(w1 & 0xFF)


def decap_batch(batch: FrameBatch, strict: int) -> None:
    """Validate every received payload; set ``status``, ``vni`` and ``frame_len`` (``strict``:
    an ``abi.Strict``)."""
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
            elif strict and _reserved_set(w0, w1, strict):
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


def _inner_ip(f: memoryview) -> tuple[int, int, int]:
    """(TOS / traffic class, TTL / hop limit, DF) of the inner packet; zeros if not IP."""
    h = parse(f)
    ip = h.l3
    if h.ip == 4:
        return f[ip + 1], f[ip + 8], int(bool(f[ip + 6] & 0x40))
    if h.ip == 6:
        return ((f[ip] & 0x0F) << 4) | (f[ip + 1] >> 4), f[ip + 7], 1  # IPv6: never fragmented
    return 0, 0, 0


def outer_fields(batch: FrameBatch, outer: Outer) -> None:
    """``tos``, ``ttl``, ``df`` of each slot's outer header (see kernels.py)."""
    check_batch(batch)
    limit = batch.slot - batch.headroom
    for i in range(batch.count):
        n = batch.frame_len[i]
        tos, ttl, df = _inner_ip(batch.frame(i)) if n <= limit else (0, 0, 0)
        ecn = tos & 3
        base = tos if outer.tos_inherit else outer.tos
        batch.tos[i] = (base & ~3) | (2 if ecn == 3 else ecn)
        batch.ttl[i] = ttl if outer.ttl_inherit and ttl else outer.ttl
        batch.df[i] = df if outer.df_inherit else int(outer.df)


def ecn_decap(batch: FrameBatch) -> int:
    """RFC 6040 decapsulation of the ECN field of each decapsulated slot (see kernels.py)."""
    check_batch(batch)
    rewritten = 0
    for i in range(batch.count):
        outer = batch.tos[i] & 3
        if batch.status[i] != Status.OK or outer == 0:
            continue
        f = batch.frame(i)
        h = parse(f)
        if not h.ip:
            continue
        ip = h.l3
        inner = f[ip + 1] & 3 if h.ip == 4 else (f[ip + 1] >> 4) & 3
        if inner == 0:
            if outer == 3:
                batch.status[i] = Status.ECN
            continue
        want = 3 if outer == 3 else (1 if outer == 1 and inner == 2 else inner)
        if want == inner:
            continue
        if h.ip == 4:
            old = (f[ip] << 8) | f[ip + 1]
            f[ip + 1] = (f[ip + 1] & ~3 & 0xFF) | want
            new = (f[ip] << 8) | f[ip + 1]
            s = (~((f[ip + 10] << 8) | f[ip + 11]) & 0xFFFF) + (~old & 0xFFFF) + new
            while s >> 16:
                s = (s & 0xFFFF) + (s >> 16)
            struct.pack_into("!H", f, ip + 10, ~s & 0xFFFF)
        else:
            f[ip + 1] = (f[ip + 1] & 0xCF) | (want << 4)
        rewritten += 1
    return rewritten
