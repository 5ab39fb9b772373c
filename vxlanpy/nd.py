"""IPv6 neighbour discovery for the proxy (RFC 4861): a solicitation's parser and the
advertisement that answers it. Pure.

The proxy (engine.py, device -> wire rule 3) answers a neighbour solicitation from the device
out of the segment's neighbour table, as the kernel's vxlan ``proxy`` flag does
(``neigh_reduce``). What counts as a solicitation is what the kernel takes for one: an untagged
Ethernet/IPv6 frame whose next header is ICMPv6 (no extension headers), type 135, code 0, with
the 24 bytes of the message there. Anything else is not the proxy's and is forwarded as any
frame. The answer is built as the kernel builds it (``vxlan_na_create``): Solicited and
Override set, the Router flag as given, a target link-layer address option, hop limit 255,
from the target address to the solicitation's source, to the Ethernet address in its source
link-layer address option if it has one (else its Ethernet source), the traffic class's
upper four bits copied.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .wire import ETH_HLEN, ETH_P_IPV6

__all__ = [
    "Solicitation",
    "BadSolicitation",
    "parse_solicitation",
    "advertisement",
    "UNSPECIFIED",
    "LOOPBACK",
    "ICMPV6",
    "ND_SOLICIT",
    "ND_ADVERT",
]

ICMPV6 = 58
ND_SOLICIT = 135
ND_ADVERT = 136
OPT_SOURCE_LLADDR = 1
OPT_TARGET_LLADDR = 2
FLAG_ROUTER, FLAG_SOLICITED, FLAG_OVERRIDE = 0x80, 0x40, 0x20  # first byte after the checksum
UNSPECIFIED = bytes(16)  # the source of a duplicate address detection solicitation
LOOPBACK = bytes(15) + b"\x01"
_IP6_HLEN = 40
_NS_LEN = 24  # type, code, checksum, reserved, target
_NA_LEN = _NS_LEN + 8  # and a target link-layer address option
_IP6 = struct.Struct("!IHBB16s16s")  # version/class/label, payload length, next, hops, src, dst


class BadSolicitation(ValueError):
    """A neighbour solicitation that cannot be answered: too short for its payload length, or
    an option of length zero or running past the end (RFC 4861 section 7.1.1)."""


class Solicitation(NamedTuple):
    """The fields of a neighbour solicitation the answer is built from (raw bytes; a tuple:
    one is made per solicitation, a frozen dataclass costs several times more)."""

    eth_src: bytes
    tclass: int
    src: bytes  # the IPv6 source; UNSPECIFIED for duplicate address detection
    dst: bytes
    target: bytes
    lladdr: bytes | None  # the source link-layer address option

    @property
    def dad(self) -> bool:
        """Duplicate address detection: the sender does not own an address yet."""
        return self.src == UNSPECIFIED


def parse_solicitation(frame: bytes | bytearray | memoryview) -> Solicitation | None:
    """The solicitation in the Ethernet ``frame``; ``None`` if it is not one (see the module
    docstring); BadSolicitation if it is one with a malformed message."""
    if len(frame) < ETH_HLEN + _IP6_HLEN + _NS_LEN:
        return None
    if (frame[12] << 8) | frame[13] != ETH_P_IPV6 or frame[ETH_HLEN] >> 4 != 6:
        return None
    first, plen, nxt, _hops, src, dst = _IP6.unpack_from(frame, ETH_HLEN)
    icmp = ETH_HLEN + _IP6_HLEN
    if nxt != ICMPV6 or frame[icmp] != ND_SOLICIT or frame[icmp + 1] != 0:
        return None
    if plen < _NS_LEN or icmp + plen > len(frame):
        raise BadSolicitation(
            f"neighbour solicitation of {plen} bytes in a {len(frame)}-byte frame"
        )
    lladdr = None
    i, end = icmp + _NS_LEN, icmp + plen
    while i + 2 <= end:
        kind, units = frame[i], frame[i + 1]
        if units == 0 or i + 8 * units > end:
            raise BadSolicitation(f"neighbour solicitation option {kind} of length {units}")
        if kind == OPT_SOURCE_LLADDR and lladdr is None:
            lladdr = bytes(frame[i + 2 : i + 8])
        i += 8 * units
    target = bytes(frame[icmp + 8 : icmp + _NS_LEN])
    return Solicitation(bytes(frame[6:12]), (first >> 20) & 0xFF, src, dst, target, lladdr)


def advertisement(ns: Solicitation, mac: bytes, router: bool = False) -> bytes:
    """The Ethernet frame answering ``ns`` with ``mac`` as the owner of its target address."""
    flags = FLAG_SOLICITED | FLAG_OVERRIDE | (FLAG_ROUTER if router else 0)
    body = bytearray(struct.pack("!BBHB3x16s", ND_ADVERT, 0, 0, flags, ns.target))
    body += bytes((OPT_TARGET_LLADDR, 1)) + mac
    # the ICMPv6 checksum covers the pseudo-header: addresses, upper-layer length, next header
    total = int.from_bytes(ns.target + ns.src + body) + len(body) + ICMPV6
    struct.pack_into("!H", body, 2, 0xFFFF - (total % 0xFFFF or 0xFFFF))
    ip6 = _IP6.pack(
        (6 << 28) | ((ns.tclass & 0xF0) << 20), len(body), ICMPV6, 255, ns.target, ns.src
    )
    return (ns.lladdr or ns.eth_src) + mac + struct.pack("!H", ETH_P_IPV6) + ip6 + bytes(body)
