"""Where an Ethernet frame's network headers are: the one header parse of the Python side.

The twin of ``vx_parse`` in csrc/offload.c, with the same fields and the same checks; the flow
hash (wire.py) and every offload twin (_offload_py.py) read frames through it. Pure.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["L3L4", "parse", "NOT_IP", "Outer", "DEFAULT_OUTER"]

_VLAN = (0x8100, 0x88A8)


class L3L4(NamedTuple):
    """Offsets and fields of a frame's IP and L4 headers (``ip`` 0: none found).

    ``l4_len`` is the L4 length the IP header claims; ``ok`` says that the IP lengths fit the
    frame (IPv4: header length >= 20 and total length within the frame; IPv6: payload length
    within the frame)."""

    ethertype: int
    l3: int
    ip: int
    proto: int
    fragment: bool
    ok: bool
    l4: int
    l4_len: int
    tags: int


NOT_IP = L3L4(0, 0, 0, 0, False, False, 0, 0, 0)


def parse(f: bytes | bytearray | memoryview) -> L3L4:
    """Parse the Ethernet frame ``f`` (VLAN tags skipped). See :class:`L3L4`."""
    n = len(f)
    if n < 14:
        return NOT_IP
    off = 12
    et = (f[12] << 8) | f[13]
    tags = 0
    while et in _VLAN and n >= off + 6:
        off += 4
        et = (f[off] << 8) | f[off + 1]
        tags += 1
    l3 = off + 2
    if et == 0x0800 and n >= l3 + 20 and f[l3] >> 4 == 4:
        ihl = (f[l3] & 0x0F) * 4
        tot = (f[l3 + 2] << 8) | f[l3 + 3]
        frag = bool(((f[l3 + 6] << 8) | f[l3 + 7]) & 0x3FFF)  # MF set, or an offset
        ok = ihl >= 20 and ihl <= tot <= n - l3
        return L3L4(et, l3, 4, f[l3 + 9], frag, ok, l3 + ihl, max(tot - ihl, 0), tags)
    if et == 0x86DD and n >= l3 + 40 and f[l3] >> 4 == 6:
        plen = (f[l3 + 4] << 8) | f[l3 + 5]
        return L3L4(et, l3, 6, f[l3 + 6], False, plen <= n - l3 - 40, l3 + 40, plen, tags)
    return L3L4(et, l3, 0, 0, False, False, 0, 0, tags)


class Outer(NamedTuple):
    """How the outer IP header's TOS, TTL and DF follow from the inner packet (vx_outer): the
    kernel's ``tos N|inherit``, ``ttl N|inherit|auto``, ``df unset|set|inherit``. ECN is always
    carried, as the kernel does: the inner ECN field is copied out (CE sent as ECT(0)) and, with
    ``ecn_decap``, RFC 6040 applied on receive. ``ttl`` 0: the system's default (``auto``)."""

    tos: int = 0
    tos_inherit: bool = False
    ttl: int = 0
    ttl_inherit: bool = False
    df: bool = False
    df_inherit: bool = False
    ecn_decap: bool = True
    zero_csum: bool = False  # outer UDP checksum 0 (noudpcsum / udp6zerocsumtx): no UDP GSO


DEFAULT_OUTER = Outer()  # TOS 0 (ECN carried), the system's TTL, DF unset: the kernel's defaults
