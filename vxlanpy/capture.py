"""Trace records as a pcapng capture: inner frames and outer datagrams on two interfaces of
one file, each packet with a comment giving the decision (tracetext.record_line).

Interface 0, ``overlay`` (Ethernet): the inner frames, as read from or written to a segment's
device. Interface 1, ``underlay`` (raw IP): the VXLAN datagrams, with their IP and UDP headers
synthesized from the record (the local address, the remote or outer source, the ports), one per
copy sent. A frame sent to N remotes is 1 + N packets; a datagram received and delivered 2; a
drop is the one packet that was dropped (a received datagram: its outer packet).
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from typing import Any, BinaryIO

from .framedesc import ipv4_checksum
from .pcapng import LINKTYPE_ETHERNET, LINKTYPE_RAW, PcapngWriter
from .trace import TraceRecord
from .tracetext import record_line
from .wire import VXLAN_HLEN, VXLAN_PORT

__all__ = ["Capture", "outer_packet"]

_MAX_IP = 65535


@functools.lru_cache(maxsize=4096)
def _addr(text: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(text)
    return ip.version, ip.packed


def outer_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes | None:
    """An IPv4 or IPv6 + UDP packet around ``payload`` (None if it would exceed 64 KiB: a
    TCP super-frame, which goes out cut in several datagrams). UDP checksum 0 over IPv4."""
    (sv, s), (dv, d) = _addr(src), _addr(dst)
    udp_len = 8 + len(payload)
    if sv != dv:
        sv, s = _addr("::" if dv == 6 else "0.0.0.0")
    if sv == 4:
        if udp_len + 20 > _MAX_IP:
            return None
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0x4000, 64, 17, 0, s, d)
        ip = ip[:10] + struct.pack("!H", ipv4_checksum(ip)) + ip[12:]
    else:
        if udp_len > _MAX_IP:
            return None
        ip = struct.pack("!IHBB16s16s", 6 << 28, udp_len, 17, 64, s, d)
    return ip + struct.pack("!HHHH", sport, dport, udp_len, 0) + payload


def _with_vni(payload: bytes, vni: int) -> bytes:
    if len(payload) < VXLAN_HLEN:
        return payload
    return payload[:4] + vni.to_bytes(3, "big") + payload[7:]


class Capture:
    """Write each record given to ``record`` (a trace sink) as pcapng packets to ``f``.
    ``local``: this VTEP's underlay address (the outer packets' own end; default: unknown,
    0.0.0.0 or ::); ``dstport``: the UDP port it listens on."""

    def __init__(self, f: BinaryIO, local: str | None = None, dstport: int = VXLAN_PORT) -> None:
        self.writer = PcapngWriter(f)
        self.inner = self.writer.add_interface(
            LINKTYPE_ETHERNET, "overlay", "inner Ethernet frames of the VXLAN segments"
        )
        self.outer = self.writer.add_interface(
            LINKTYPE_RAW, "underlay", "VXLAN datagrams (IP and UDP headers synthesized)"
        )
        self.local = local
        self.dstport = dstport
        self.records = 0

    def _local(self, peer: str) -> str:
        if self.local:
            return self.local
        return "::" if ":" in peer else "0.0.0.0"

    def record(self, rec: TraceRecord) -> None:
        """Write the packets of one record (see the module docstring)."""
        self.records += 1
        d: dict[str, Any] = rec.to_dict()
        line = record_line(d)
        w, t = self.writer, rec.time
        if rec.direction == "tx":
            if rec.frame:
                w.write_packet(self.inner, t, rec.frame, line)
            n = len(rec.remotes)
            for k, h in enumerate(rec.remotes):
                pkt = outer_packet(
                    self._local(h.ip), h.ip, h.sport, h.port, _with_vni(rec.payload, h.vni)
                )
                if pkt is not None:
                    w.write_packet(self.outer, t, pkt, f"copy {k + 1}/{n} to {h.ip}: {line}")
            return
        src = rec.source or "0.0.0.0"
        if rec.payload:
            pkt = outer_packet(src, self._local(src), rec.source_port, self.dstport, rec.payload)
            if pkt is not None:
                w.write_packet(self.outer, t, pkt, line)
        elif rec.verdict == "dropped":  # truncated in its slot: what is left is its header
            pkt = outer_packet(src, self._local(src), rec.source_port, self.dstport, b"")
            if pkt is not None:
                w.write_packet(self.outer, t, pkt, line)
        if rec.verdict == "delivered" and rec.frame:
            w.write_packet(self.inner, t, rec.frame, f"delivered: {line}")

    def flush(self) -> None:
        self.writer.flush()
