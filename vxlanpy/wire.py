"""Wire formats: VXLAN header (RFC 7348), Ethernet II, ARP, and the inner-flow key.

Everything here is pure: bytes in, values out, no sockets and no clock. Single-frame helpers are
plain Python (``struct``) on purpose: one C call per frame costs more than ``struct.pack_into``.
The batch kernels live in the fast path (:mod:`vxlanpy.kernels`).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
import zlib
from dataclasses import dataclass

from .abi import Status
from .headers import parse

__all__ = [
    "VXLAN_PORT",
    "VXLAN_PORT_LINUX",
    "VXLAN_HLEN",
    "ETH_HLEN",
    "VXLAN_FLAG_I",
    "VNI_MAX",
    "ETH_P_IP",
    "ETH_P_IPV6",
    "ETH_P_ARP",
    "ETH_P_8021Q",
    "ETH_P_8021AD",
    "BROADCAST_MAC",
    "ZERO_MAC",
    "DropReason",
    "MalformedPacket",
    "STATUS_REASONS",
    "encode_header",
    "decode_header",
    "encapsulate",
    "decapsulate",
    "parse_mac",
    "format_mac",
    "is_multicast_mac",
    "check_vni",
    "ARP_REQUEST",
    "ARP_REPLY",
    "ArpPacket",
    "parse_arp",
    "build_arp_frame",
    "flow_key",
    "flow_hash",
    "port_from_hash",
    "source_port",
    "fmix32",
    "DEFAULT_SRCPORT_RANGE",
]

VXLAN_PORT = 4789  # IANA
VXLAN_PORT_LINUX = 8472  # Linux default before the IANA assignment; flannel uses it
VXLAN_HLEN = 8
ETH_HLEN = 14
VXLAN_FLAG_I = 0x08
VNI_MAX = (1 << 24) - 1
DEFAULT_SRCPORT_RANGE = (49152, 65535)

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8

BROADCAST_MAC = b"\xff" * 6
ZERO_MAC = b"\x00" * 6

_HDR = struct.Struct("!II")  # flags+reserved(24) | vni(24)+reserved(8)


class DropReason(enum.StrEnum):
    """Why a packet was dropped. The values are stable: they appear in counters and events."""

    TOO_SHORT = "too-short"  # UDP payload shorter than the 8-byte VXLAN header
    NO_I_FLAG = "no-i-flag"  # I flag clear: the VNI is not valid (RFC 7348 section 5)
    RESERVED_BITS = "reserved-bits"  # strict mode: a reserved bit is set
    INNER_TOO_SHORT = "inner-too-short"  # inner frame shorter than an Ethernet header
    UNKNOWN_VNI = "unknown-vni"  # no segment with this VNI on this VTEP
    VLAN_TAGGED = "vlan-tagged"  # 802.1Q inner frame while VLAN frames are not allowed
    SPOOFED_STATIC = "spoofed-static"  # source MAC is a static entry of another VTEP
    BAD_SOURCE_MAC = "bad-source-mac"  # inner source MAC is multicast/broadcast or zero
    NO_DESTINATION = "no-destination"  # nothing to send to: no FDB hit and no flood list
    L3_MISS = "l3-miss"  # proxied ARP request or neighbour solicitation, address not known
    LOOPED = "looped"  # frame received from the wire carries one of our own local MACs
    NOT_ALLOWED = "source-not-allowed"  # from a VTEP outside the segment's allowlist
    ECN_ERROR = "ecn-error"  # outer CE over a not-ECT inner packet (RFC 6040: dropped)
    ND_DAD = "nd-dad"  # proxy on: a duplicate address detection solicitation, not answered
    BAD_ND = "bad-nd"  # proxy on: a neighbour solicitation with a malformed message


# What each status of the batch parser (abi.Status, from csrc/vx.h) is dropped for.
STATUS_OK = Status.OK
STATUS_REASONS: dict[int, DropReason] = {
    Status.TOO_SHORT: DropReason.TOO_SHORT,
    Status.NO_I_FLAG: DropReason.NO_I_FLAG,
    Status.RESERVED: DropReason.RESERVED_BITS,
    Status.INNER_TOO_SHORT: DropReason.INNER_TOO_SHORT,
    Status.ECN: DropReason.ECN_ERROR,
}


class MalformedPacket(ValueError):
    """A packet that cannot be decoded. ``reason`` says why (a :class:`DropReason`)."""

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


def check_vni(vni: int) -> int:
    """Return ``vni`` if it fits in 24 bits, else raise ``ValueError``."""
    if not isinstance(vni, int) or isinstance(vni, bool) or not 0 <= vni <= VNI_MAX:
        raise ValueError(f"VNI must be an integer in 0..{VNI_MAX}, got {vni!r}")
    return vni


def encode_header(vni: int) -> bytes:
    """The 8-byte VXLAN header for ``vni``: I flag set, every reserved field zero."""
    return _HDR.pack(VXLAN_FLAG_I << 24, check_vni(vni) << 8)


def decode_header(payload: bytes | bytearray | memoryview, strict: bool = False) -> int:
    """Validate the VXLAN header at the start of ``payload`` and return the VNI.

    Default policy (RFC 7348): the I flag must be set, reserved bits are ignored. With
    ``strict`` (what Linux does) any reserved bit set is a drop as well. Raises
    :class:`MalformedPacket`; the caller drops the packet and counts ``exc.reason``.
    """
    if len(payload) < VXLAN_HLEN:
        raise MalformedPacket(DropReason.TOO_SHORT, f"{len(payload)} bytes")
    word0, word1 = _HDR.unpack_from(payload)
    if not (word0 >> 24) & VXLAN_FLAG_I:
        raise MalformedPacket(DropReason.NO_I_FLAG, f"flags 0x{word0 >> 24:02x}")
    if strict and (word0 != VXLAN_FLAG_I << 24 or word1 & 0xFF):
        raise MalformedPacket(DropReason.RESERVED_BITS, f"header {bytes(payload[:8]).hex()}")
    return int(word1) >> 8


def encapsulate(frame: bytes | bytearray | memoryview, vni: int) -> bytes:
    """Return the UDP payload that carries ``frame`` on ``vni``: VXLAN header + frame.

    The frame is not inspected. Send the result in a UDP datagram to port 4789 (or 8472).
    """
    return encode_header(vni) + bytes(frame)


def decapsulate(payload: bytes | bytearray | memoryview, strict: bool = False) -> tuple[int, bytes]:
    """Split a received UDP payload into ``(vni, inner_frame)``.

    Raises :class:`MalformedPacket` (with ``.reason``) when the header is invalid or the inner
    frame is shorter than an Ethernet header.
    """
    vni = decode_header(payload, strict)
    if len(payload) - VXLAN_HLEN < ETH_HLEN:
        raise MalformedPacket(
            DropReason.INNER_TOO_SHORT, f"inner frame {len(payload) - VXLAN_HLEN} bytes"
        )
    return vni, bytes(payload[VXLAN_HLEN:])


# --- MAC addresses ----------------------------------------------------------------------------


_HEX = frozenset("0123456789abcdefABCDEF")


def parse_mac(text: str) -> bytes:
    """Parse ``aa:bb:cc:dd:ee:ff`` (or with ``-``) into 6 bytes; ``ValueError`` otherwise."""
    parts = text.strip().replace("-", ":").split(":")
    # Check the digits here: int(p, 16) alone also takes "+f", " f", "_" and non-ASCII digits.
    if len(parts) != 6 or not all(1 <= len(p) <= 2 and _HEX.issuperset(p) for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def format_mac(mac: bytes) -> str:
    """Format 6 bytes as ``aa:bb:cc:dd:ee:ff``."""
    return mac.hex(":")


def is_multicast_mac(mac: bytes) -> bool:
    """True for group addresses (broadcast included): the I/G bit of the first octet."""
    return bool(mac[0] & 1)


# --- ARP --------------------------------------------------------------------------------------

ARP_REQUEST = 1
ARP_REPLY = 2
_ARP = struct.Struct("!HHBBH6s4s6s4s")  # Ethernet/IPv4 ARP, 28 bytes


@dataclass(frozen=True, slots=True)
class ArpPacket:
    """An Ethernet/IPv4 ARP packet (RFC 826). Addresses are raw bytes."""

    op: int
    sha: bytes
    spa: bytes
    tha: bytes
    tpa: bytes

    @property
    def sender_ip(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(self.spa)

    @property
    def target_ip(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(self.tpa)


def parse_arp(payload: bytes | bytearray | memoryview) -> ArpPacket | None:
    """Parse the ARP body after the Ethernet header; ``None`` if it is not Ethernet/IPv4 ARP."""
    if len(payload) < _ARP.size:
        return None
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(payload)
    if htype != 1 or ptype != ETH_P_IP or hlen != 6 or plen != 4:
        return None
    return ArpPacket(op, sha, spa, tha, tpa)


def build_arp_frame(dst_mac: bytes, src_mac: bytes, arp: ArpPacket) -> bytes:
    """A complete Ethernet frame carrying ``arp``, padded to the 60-byte Ethernet minimum."""
    body = _ARP.pack(1, ETH_P_IP, 6, 4, arp.op, arp.sha, arp.spa, arp.tha, arp.tpa)
    frame = dst_mac + src_mac + struct.pack("!H", ETH_P_ARP) + body
    return frame + b"\x00" * (60 - len(frame))


# --- Inner-flow hash -> UDP source port -------------------------------------------------------
# The definition below is the contract the C fast path implements byte for byte:
#   key  = 0x04, proto, src(4), dst(4) [, sport, dport]     IPv4 (ports unless a fragment)
#        = 0x06, next-header, src(16), dst(16) [, ports]    IPv6
#        = 0x00, dst MAC, src MAC, ethertype                anything else
#        = 0x00, frame                                      frames under 14 bytes
#   hash = fmix32(crc32(key))   crc32 as zlib's (IEEE 802.3), fmix32 MurmurHash3's finaliser
#   port = lo + (hash * (hi - lo + 1)) >> 32
# 802.1Q/802.1ad tags are skipped before the ethertype is read.

_L4_WITH_PORTS = frozenset((6, 17, 132, 136))  # TCP, UDP, SCTP, UDP-Lite


def fmix32(h: int) -> int:
    """MurmurHash3's 32-bit finaliser: spreads CRC32's output over all bits."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h


def flow_key(frame: bytes | bytearray | memoryview) -> bytes:
    """The bytes that identify the inner flow of ``frame`` (see the contract above)."""
    n = len(frame)
    if n < ETH_HLEN:
        return b"\x00" + bytes(frame)
    h = parse(frame)
    if h.ip == 4:
        key = bytes((4, h.proto)) + bytes(frame[h.l3 + 12 : h.l3 + 20])
        if not h.fragment and h.proto in _L4_WITH_PORTS and h.l4 >= h.l3 + 20 and n >= h.l4 + 4:
            key += bytes(frame[h.l4 : h.l4 + 4])
        return key
    if h.ip == 6:
        key = bytes((6, h.proto)) + bytes(frame[h.l3 + 8 : h.l3 + 40])
        if h.proto in _L4_WITH_PORTS and n >= h.l4 + 4:
            key += bytes(frame[h.l4 : h.l4 + 4])
        return key
    return b"\x00" + bytes(frame[0:12]) + bytes((h.ethertype >> 8, h.ethertype & 0xFF))


def flow_hash(frame: bytes | bytearray | memoryview) -> int:
    """32-bit hash of the inner flow: the same flow always gives the same value."""
    return fmix32(zlib.crc32(flow_key(frame)))


def port_from_hash(h: int, lo: int, hi: int) -> int:
    """Map a 32-bit hash onto ``lo..hi`` (inclusive), as Linux's ``udp_flow_src_port`` does."""
    return lo + ((h * (hi - lo + 1)) >> 32)


def source_port(frame: bytes | bytearray | memoryview, lo: int = 49152, hi: int = 65535) -> int:
    """The outer UDP source port for ``frame``: a hash of its inner flow in ``lo..hi``."""
    return port_from_hash(flow_hash(frame), lo, hi)
