"""UDP transport of a VTEP: one receive socket per (local address, dstport), one send socket.

Receiving is a plain UDP socket bound to ``dstport`` (joined to the multicast group if there is
one). Sending goes through a raw ``IPPROTO_UDP`` socket so that each datagram can carry its own
source port, taken from the inner-flow hash as the kernel's vxlan does; the kernel still builds
the IP header (routing, TTL, TOS, DF, fragmentation). The raw socket would also receive a copy
of every UDP packet on the host, so a one-instruction BPF filter makes it drop everything.
Outer UDP checksums are zero over IPv4 (RFC 7348 section 5) and computed by the kernel over
IPv6 (``IPV6_CHECKSUM``).
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import socket
import struct
from collections import Counter
from typing import Literal

from .. import fastio
from ..batch import FrameBatch
from ..engine import Datagram

__all__ = ["UdpTransport", "TransportError", "DfPolicy"]

DfPolicy = Literal["unset", "set"]

SO_ATTACH_FILTER = 26
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT = 0
IP_PMTUDISC_DO = 2
IPV6_CHECKSUM = 7
IPV6_MTU_DISCOVER = 23
IPV6_PMTUDISC_DONT = 0
IPV6_PMTUDISC_DO = 2
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32

_UDP = struct.Struct("!HHHH")


class TransportError(Exception):
    """The sockets could not be set up (port in use, bad address, ...)."""


class _DropAll:
    """A classic-BPF program ``ret #0`` (accept no bytes), kept alive for the socket's life."""

    def __init__(self) -> None:
        self.insns = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0), 8)
        self.prog = struct.pack("HL", 1, ctypes.addressof(self.insns))


class UdpTransport:
    """Receive VXLAN datagrams on ``port`` and send them from hashed source ports."""

    def __init__(
        self,
        *,
        port: int,
        local: str | None = None,
        family: int = socket.AF_INET,
        group: str | None = None,
        dev: str | None = None,
        ttl: int | None = None,
        tos: int | None = None,
        df: DfPolicy = "unset",
        bufsize: int = 8 << 20,
    ) -> None:
        if local is not None:
            family = socket.AF_INET6 if ipaddress.ip_address(local).version == 6 else family
        elif group is not None:
            family = socket.AF_INET6 if ipaddress.ip_address(group).version == 6 else family
        self.family = family
        self.port = port
        self.local = local
        self.group = group
        self.errors: Counter[str] = Counter()
        self.tx_packets = 0
        self._filter = _DropAll()
        v6 = family == socket.AF_INET6
        ifindex = socket.if_nametoindex(dev) if dev else 0
        self.rx = socket.socket(family, socket.SOCK_DGRAM)
        self.tx = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_UDP)
        try:
            self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _set_buf(self.rx, SO_RCVBUFFORCE, socket.SO_RCVBUF, bufsize)
            _set_buf(self.tx, SO_SNDBUFFORCE, socket.SO_SNDBUF, bufsize)
            bind_ip = local if group is None and local is not None else ("::" if v6 else "")
            try:
                self.rx.bind((bind_ip, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise TransportError(f"UDP port {port} is in use") from exc
                raise TransportError(f"cannot bind {bind_ip or '*'}:{port}: {exc}") from exc
            self.rx.setblocking(False)
            self.tx.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, self._filter.prog)
            if local is not None:
                try:
                    self.tx.bind((local, 0))
                except OSError as exc:
                    raise TransportError(f"{local} is not a local address: {exc}") from exc
            self.tx.setblocking(False)
            if v6:
                self._setup_v6(ifindex, ttl, tos, df)
            else:
                self._setup_v4(ifindex, ttl, tos, df)
        except BaseException:
            self.close()
            raise

    def _setup_v4(self, ifindex: int, ttl: int | None, tos: int | None, df: DfPolicy) -> None:
        tx = self.tx
        pmtu = IP_PMTUDISC_DO if df == "set" else IP_PMTUDISC_DONT
        tx.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, pmtu)
        if ttl is not None:
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        if tos is not None:
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl if ttl is not None else 1)
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        if self.group is not None:
            any4 = socket.inet_aton("0.0.0.0")
            mreqn = socket.inet_aton(self.group) + any4 + struct.pack("i", ifindex)
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
            try:
                self.rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            except OSError as exc:
                raise TransportError(f"cannot join {self.group}: {exc}") from exc
            self.rx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)

    def _setup_v6(self, ifindex: int, ttl: int | None, tos: int | None, df: DfPolicy) -> None:
        tx = self.tx
        tx.setsockopt(socket.IPPROTO_IPV6, IPV6_CHECKSUM, 6)
        pmtu = IPV6_PMTUDISC_DO if df == "set" else IPV6_PMTUDISC_DONT
        tx.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, pmtu)
        if ttl is not None:
            tx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
        if tos is not None:
            tx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
        hops = ttl if ttl is not None else 1
        tx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, hops)
        tx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        if self.group is not None:
            tx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
            mreq = socket.inet_pton(socket.AF_INET6, self.group) + struct.pack("I", ifindex)
            try:
                self.rx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
            except OSError as exc:
                raise TransportError(f"cannot join {self.group}: {exc}") from exc
            self.rx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)

    def fileno(self) -> int:
        return self.rx.fileno()

    def recv_batch(self, batch: FrameBatch, sources: list[str]) -> int:
        """Read datagrams into ``batch`` until EAGAIN or full; append each source IP."""
        got = 0
        rx = self.rx
        while batch.count < batch.capacity:
            i = batch.count
            try:
                n, _anc, flags, addr = rx.recvmsg_into([batch.payload_buffer(i)])
            except BlockingIOError:
                break
            except OSError as exc:  # ICMP errors surface here (ECONNREFUSED, ...): count them
                self.errors[errno.errorcode.get(exc.errno or 0, str(exc.errno))] += 1
                continue
            if flags & socket.MSG_TRUNC:  # larger than a slot: never deliver a cut frame
                self.errors["truncated"] += 1
                continue
            batch.payload_len[i] = n
            batch.count += 1
            sources.append(addr[0])
            got += 1
        return got

    def send(self, d: Datagram) -> bool:
        """Send one datagram; False (and counted by errno) if the kernel refused it."""
        n = len(d.payload) + 8
        try:
            self.tx.sendmsg([_UDP.pack(d.sport, d.port, n, 0), d.payload], (), 0, (d.host, 0))
        except OSError as exc:
            self.errors[errno.errorcode.get(exc.errno or 0, str(exc.errno))] += 1
            return False
        self.tx_packets += 1
        return True

    def send_slots(self, batch: FrameBatch, first: int, n: int, port: int, host: str) -> int:
        """Send slots ``first..first+n-1`` of ``batch`` (payloads and source ports as
        ``encap_batch`` left them) to ``host:port`` in one batched syscall; count failures."""
        sent = fastio.send_batch(self.tx, batch, first, n, port, host)
        if sent < 0:
            self.errors[errno.errorcode.get(-sent, str(-sent))] += n
            return 0
        if sent < n:
            self.errors["EAGAIN"] += n - sent  # socket buffer full: the rest is dropped
        self.tx_packets += sent
        return sent

    def close(self) -> None:
        for s in (self.rx, self.tx):
            try:
                s.close()
            except OSError:
                pass


def _set_buf(sock: socket.socket, force: int, plain: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:  # no CAP_NET_ADMIN: the plain option, capped by net.core.*mem_max
        sock.setsockopt(socket.SOL_SOCKET, plain, size)
