"""ICMP errors about what a VTEP sent: read from the send sockets' error queues, counted per
remote, reported as rate-limited events.

Linux drops ICMP errors for unconnected UDP sockets unless ``IP_RECVERR`` / ``IPV6_RECVERR``
is on: then each one waits in the socket's error queue (``recvmsg(MSG_ERRQUEUE)``) with a
``sock_extended_err`` (origin, ICMP type and code, ``ee_info`` = the MTU a "fragmentation
needed" / "packet too big" reports, and the address of the node that sent the ICMP error); the
``msg_name`` of that receive is the destination of the datagram that caused it: the remote
VTEP. This module parses those reports (:func:`parse_report`) and keeps the per-remote counts
(:class:`IcmpCounters`); :class:`~vxlanpy.io.udp.UdpTransport` reads the queues.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from ..events import IcmpError

__all__ = [
    "IP_RECVERR",
    "IPV6_RECVERR",
    "MSG_ERRQUEUE",
    "IcmpReport",
    "IcmpCounters",
    "parse_report",
    "KINDS",
]

IP_RECVERR = 11  # linux/in.h
IPV6_RECVERR = 25  # linux/in6.h
MSG_ERRQUEUE = 0x2000
SO_EE_ORIGIN_LOCAL, SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6 = 1, 2, 3
_EE = struct.Struct("=IBBBBII")  # ee_errno, ee_origin, ee_type, ee_code, ee_pad, ee_info, ee_data
KINDS = ("unreachable", "frag_needed", "ttl_exceeded", "other")
MAX_REMOTES = 1024  # remotes counted one by one; reports about others go to OTHER_REMOTES
OTHER_REMOTES = "other-remotes"
EVENT_INTERVAL = 1.0  # at most one event per remote per second


@dataclass(frozen=True, slots=True)
class IcmpReport:
    """One ICMP error: ``kind`` is one of :data:`KINDS`; ``mtu`` for frag_needed (else None);
    ``offender`` the node that sent it (None if not given)."""

    errno: int
    icmp_type: int
    icmp_code: int
    kind: str
    mtu: int | None
    offender: str | None


def _kind(v6: bool, icmp_type: int, icmp_code: int) -> str:
    if v6:  # ICMPv6: 1 destination unreachable, 2 packet too big, 3 time exceeded
        return {1: "unreachable", 2: "frag_needed", 3: "ttl_exceeded"}.get(icmp_type, "other")
    if icmp_type == 3:  # ICMP destination unreachable; code 4: fragmentation needed (DF set)
        return "frag_needed" if icmp_code == 4 else "unreachable"
    return "ttl_exceeded" if icmp_type == 11 else "other"


def _offender(raw: bytes) -> str | None:
    """The sockaddr after the sock_extended_err (AF_UNSPEC when the kernel gives none)."""
    if len(raw) >= 8 and struct.unpack_from("=H", raw)[0] == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[4:8]))
    if len(raw) >= 24 and struct.unpack_from("=H", raw)[0] == socket.AF_INET6:
        return str(ipaddress.IPv6Address(raw[8:24]))
    return None


def parse_report(ancdata: list[tuple[int, int, bytes]]) -> IcmpReport | None:
    """The ICMP error in the control messages of a ``MSG_ERRQUEUE`` receive, or None (no
    error message, too short, or not from ICMP: local errors are reported by the send)."""
    for level, kind, data in ancdata:
        v6 = (level, kind) == (socket.IPPROTO_IPV6, IPV6_RECVERR)
        if not v6 and (level, kind) != (socket.IPPROTO_IP, IP_RECVERR):
            continue
        if len(data) < _EE.size:
            return None
        err, origin, typ, code, _pad, info, _data = _EE.unpack_from(data)
        if origin not in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6):
            return None
        k = _kind(origin == SO_EE_ORIGIN_ICMP6, typ, code)
        mtu = info if k == "frag_needed" and info else None
        return IcmpReport(err, typ, code, k, mtu, _offender(data[_EE.size :]))
    return None


@dataclass
class _Remote:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    mtu: int | None = None
    last: IcmpReport | None = None
    event_at: float = float("-inf")
    pending: int = 0  # reports since the last event


class IcmpCounters:
    """ICMP errors per remote VTEP (at most :data:`MAX_REMOTES` of them one by one), and an
    :class:`~vxlanpy.events.IcmpError` event per remote at most every EVENT_INTERVAL seconds
    through ``emit``; an event's ``count`` is the reports since that remote's last event."""

    def __init__(self, emit: Callable[[IcmpError], None] | None = None) -> None:
        self.emit = emit
        self.unqueued = 0  # errors the 4 KiB error queue of a send socket could not hold
        self._remotes: dict[str, _Remote] = {}

    def record(self, remote: str | None, rep: IcmpReport, now: float) -> None:
        key = remote or OTHER_REMOTES
        r = self._remotes.get(key)
        if r is None:
            if len(self._remotes) >= MAX_REMOTES:
                key = OTHER_REMOTES
                r = self._remotes.get(key)
            if r is None:
                r = self._remotes[key] = _Remote()
        r.counts[rep.kind] += 1
        if rep.mtu is not None:
            r.mtu = rep.mtu
        r.last = rep
        r.pending += 1
        if self.emit is not None and now - r.event_at >= EVENT_INTERVAL:
            r.event_at = now
            n, r.pending = r.pending, 0
            self.emit(
                IcmpError(key, rep.kind, rep.icmp_type, rep.icmp_code, rep.mtu, rep.offender, n)
            )

    def total(self) -> int:
        return sum(sum(r.counts.values()) for r in self._remotes.values())

    def to_dict(self) -> dict[str, dict[str, object]]:
        """Per remote: the count of each kind, the last MTU reported, and the last report."""
        out: dict[str, dict[str, object]] = {}
        for ip, r in self._remotes.items():
            d: dict[str, object] = dict(r.counts)
            d["mtu"] = r.mtu
            if r.last is not None:
                d["last"] = {
                    "type": r.last.icmp_type,
                    "code": r.last.icmp_code,
                    "from": r.last.offender,
                }
            out[ip] = d
        return out
