"""Frames in words, both ways, for ``vxlanpy-tunnel trace``: build an Ethernet frame from a
short description (``dst MAC src MAC arp who-has IP``), and say in a few words what a frame is
(its MACs, ethertype, and the IPs of ARP, IPv4 and IPv6). Pure; no decision is made here.

Description grammar (keywords in any order before the payload keyword)::

    [dst MAC] [src MAC] [vlan ID]
    ( arp who-has IP [tell IP] | arp reply IP is-at MAC [to IP]
    | ip SRC DST [icmp|udp|tcp] | ip6 SRC DST [icmp6|udp|tcp] | ethertype N )
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Sequence
from typing import Any

from .wire import (
    ARP_REPLY,
    ARP_REQUEST,
    ETH_HLEN,
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    format_mac,
    parse_mac,
)

__all__ = ["FrameError", "build_frame", "describe_frame", "frame_fields", "ipv4_checksum"]

ETH_P_IPV4 = ETH_P_IP
BROADCAST = b"\xff" * 6
DEFAULT_SRC = bytes.fromhex("020000000001")
_PROTOS = {"icmp": 1, "tcp": 6, "udp": 17, "icmp6": 58}
_NAMES = {v: k for k, v in _PROTOS.items()}


class FrameError(ValueError):
    """A frame description that does not parse (the message says what is wrong)."""


def _take(words: list[str], what: str) -> str:
    if not words:
        raise FrameError(f"{what} expected at the end of the description")
    return words.pop(0)


def _mac(text: str) -> bytes:
    try:
        return parse_mac(text)
    except ValueError:
        raise FrameError(f"bad MAC {text!r}") from None


def _ip(text: str, version: int) -> bytes:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise FrameError(f"bad IP address {text!r}") from None
    if ip.version != version:
        raise FrameError(f"{text} is not an IPv{version} address")
    return ip.packed


def build_frame(words: Sequence[str]) -> bytes:
    """The Ethernet frame ``words`` describe (see the module docstring); FrameError if they
    do not parse. Frames are padded to 60 bytes, as a device sends them."""
    w = list(words)
    dst: bytes | None = None
    src = DEFAULT_SRC
    vlan: int | None = None
    body: tuple[int, bytes] | None = None
    while w:
        k = w.pop(0)
        if k == "dst":
            dst = _mac(_take(w, "a MAC after dst"))
        elif k == "src":
            src = _mac(_take(w, "a MAC after src"))
        elif k == "vlan":
            try:
                vlan = int(_take(w, "an ID after vlan"), 0)
            except ValueError:
                raise FrameError("vlan needs an integer ID") from None
            if not 0 <= vlan <= 4095:
                raise FrameError(f"vlan ID must be in 0..4095, got {vlan}")
        elif k == "arp":
            body = _arp(w, src)
            if dst is None and body[1][7] == ARP_REQUEST:
                dst = BROADCAST
        elif k in ("ip", "ip6"):
            body = _ip_packet(w, 4 if k == "ip" else 6)
        elif k == "ethertype":
            try:
                body = (int(_take(w, "a number after ethertype"), 0) & 0xFFFF, b"")
            except ValueError:
                raise FrameError("ethertype needs a number") from None
        else:
            raise FrameError(f"unknown word {k!r} (dst, src, vlan, arp, ip, ip6, ethertype)")
    if body is None:
        raise FrameError("say what the frame carries: arp ..., ip ..., ip6 ... or ethertype N")
    if dst is None:
        raise FrameError("give the destination: dst MAC")
    et, payload = body
    tag = b"" if vlan is None else struct.pack("!HH", ETH_P_8021Q, vlan)
    frame = dst + src + tag + struct.pack("!H", et) + payload
    return frame + bytes(max(0, 60 - len(frame)))


def _arp(w: list[str], src: bytes) -> tuple[int, bytes]:
    op = _take(w, "who-has or reply after arp")
    if op == "who-has":
        tpa = _ip(_take(w, "an IP after who-has"), 4)
        spa = bytes(4)
        if w and w[0] == "tell":
            w.pop(0)
            spa = _ip(_take(w, "an IP after tell"), 4)
        sha, tha, code = src, bytes(6), ARP_REQUEST
    elif op == "reply":
        spa = _ip(_take(w, "an IP after reply"), 4)
        if _take(w, "is-at") != "is-at":
            raise FrameError("arp reply IP is-at MAC")
        sha = _mac(_take(w, "a MAC after is-at"))
        tpa, tha, code = bytes(4), bytes(6), ARP_REPLY
        if w and w[0] == "to":
            w.pop(0)
            tpa = _ip(_take(w, "an IP after to"), 4)
    else:
        raise FrameError(f"arp {op}: say who-has or reply")
    return ETH_P_ARP, struct.pack("!HHBBH", 1, 0x0800, 6, 4, code) + sha + spa + tha + tpa


def _ip_packet(w: list[str], version: int) -> tuple[int, bytes]:
    src = _ip(_take(w, "a source IP"), version)
    dst = _ip(_take(w, "a destination IP"), version)
    proto = _PROTOS["icmp" if version == 4 else "icmp6"]
    if w and w[0] in _PROTOS:
        proto = _PROTOS[w.pop(0)]
    data = bytes(8)
    if version == 4:
        hdr = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(data), 0, 0x4000, 64, proto, 0, src, dst
        )
        hdr = hdr[:10] + struct.pack("!H", ipv4_checksum(hdr)) + hdr[12:]
        return ETH_P_IPV4, hdr + data
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(data), proto, 64, src, dst)
    return ETH_P_IPV6, hdr + data


def _v4(b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET, b)


def _v6(b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6, b)


def frame_fields(frame: bytes) -> dict[str, Any]:
    """What a frame is, for records and filters: ``dst``, ``src`` (MAC strings), ``ethertype``,
    ``vlan``, and where they can be read ``src_ip``/``dst_ip`` (ARP: sender and target),
    ``arp`` (``request``/``reply``) and ``proto`` (the IP protocol's name or number)."""
    if len(frame) < ETH_HLEN:
        return {"length": len(frame)}
    out: dict[str, Any] = {"dst": format_mac(frame[:6]), "src": format_mac(frame[6:12])}
    off = 12
    et = (frame[off] << 8) | frame[off + 1]
    if et in (ETH_P_8021Q, ETH_P_8021AD) and len(frame) >= ETH_HLEN + 4:
        out["vlan"] = ((frame[14] << 8) | frame[15]) & 0x0FFF
        off += 4
        et = (frame[off] << 8) | frame[off + 1]
    out["ethertype"] = f"0x{et:04x}"
    p = frame[off + 2 :]
    if et == ETH_P_ARP and len(p) >= 28:
        op = (p[6] << 8) | p[7]
        out["arp"] = {ARP_REQUEST: "request", ARP_REPLY: "reply"}.get(op, str(op))
        out["src_ip"] = _v4(p[14:18])
        out["dst_ip"] = _v4(p[24:28])
        out["arp_sha"] = format_mac(p[8:14])
    elif et == ETH_P_IPV4 and len(p) >= 20 and p[0] >> 4 == 4:
        out["src_ip"] = _v4(p[12:16])
        out["dst_ip"] = _v4(p[16:20])
        out["proto"] = _NAMES.get(p[9], p[9])
    elif et == ETH_P_IPV6 and len(p) >= 40 and p[0] >> 4 == 6:
        out["src_ip"] = _v6(p[8:24])
        out["dst_ip"] = _v6(p[24:40])
        out["proto"] = _NAMES.get(p[6], p[6])
    return out


def describe_frame(frame: bytes) -> str:
    """One line: ``02:..:01 > ff:..:ff, ARP who-has 198.19.0.9 tell 198.19.0.1, 60 bytes``."""
    f = frame_fields(frame)
    if "src" not in f:
        return f"{len(frame)} bytes (shorter than an Ethernet header)"
    head = f"{f['src']} > {f['dst']}" + (f" vlan {f['vlan']}" if "vlan" in f else "")
    if f.get("arp") == "request":
        what = f"ARP who-has {f['dst_ip']} tell {f['src_ip']}"
    elif f.get("arp") == "reply":
        what = f"ARP reply {f['src_ip']} is-at {f['arp_sha']}"
    elif "src_ip" in f:
        v = 4 if f["ethertype"] == "0x0800" else 6
        what = f"IPv{v} {f['src_ip']} > {f['dst_ip']} {f['proto']}"
    else:
        what = f"ethertype {f['ethertype']}"
    return f"{head}, {what}, {len(frame)} bytes"


def ipv4_checksum(header: bytes) -> int:
    """The Internet checksum of an IPv4 header whose checksum field is zero (RFC 1071)."""
    data = header + b"\0" * (len(header) & 1)
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
