"""UDP transport of a VTEP: one receive socket per (local address, dstport), send sockets per
source port.

Receiving is a UDP socket bound to ``dstport`` (joined to the multicast group if there is
one). Sending must put each inner flow on its own outer source port (the inner-flow hash, as
the kernel's vxlan does, so that ECMP and RSS spread flows). A UDP socket is bound to each
source port in use, opened on first use and kept in an LRU of ``max_ports`` sockets; a port that
cannot be bound (taken by someone else) falls back to one shared socket with an ephemeral port.
Being ordinary UDP sockets, they send runs of equal-sized datagrams as one UDP GSO send
(``UDP_SEGMENT``), and a TCP super-frame from the TAP is cut into MTU-sized chunks here, below
the engine, which decided once where the whole super-frame goes (io/batchio.py does the I/O).
The kernel builds the IP header (routing, TTL, TOS, DF) and computes the outer UDP checksum
(offloaded on most devices).

The send sockets have ``IP_RECVERR`` / ``IPV6_RECVERR`` on, so ICMP errors about what they sent
(a remote's port closed, no route to it, fragmentation needed) are kept in their error queues
instead of being dropped; once :meth:`UdpTransport.watch_errors` has registered them with the
event loop, each queue is drained when it becomes readable and the errors are counted per
remote (``icmp``, see :mod:`vxlanpy.io.errqueue`).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import select
import socket
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable

from ..abi import MAX_CHUNKS
from ..batch import FrameBatch
from ..events import IcmpError
from ..headers import DEFAULT_OUTER, Outer
from ..packets import Datagram
from ..wire import DEFAULT_SRCPORT_RANGE, VXLAN_HLEN
from . import batchio
from .errqueue import IP_RECVERR, IPV6_RECVERR, MSG_ERRQUEUE, IcmpCounters, parse_report

__all__ = ["UdpTransport", "TransportError"]

IP_MTU_DISCOVER = 10
UDP_GRO = 104  # linux/udp.h; not in the socket module
IPV6_MTU_DISCOVER = 23
_PMTU_DONT, _PMTU_DO = 0, 2  # the same values for IP_ and IPV6_PMTUDISC_*
# per family (v6?): level, MTU discovery, TTL/hops, TOS/class, multicast TTL/hops, mcast loop
_OPTS = {
    False: (
        socket.IPPROTO_IP,
        IP_MTU_DISCOVER,
        socket.IP_TTL,
        socket.IP_TOS,
        socket.IP_MULTICAST_TTL,
        socket.IP_MULTICAST_LOOP,
    ),
    True: (
        socket.IPPROTO_IPV6,
        IPV6_MTU_DISCOVER,
        socket.IPV6_UNICAST_HOPS,
        socket.IPV6_TCLASS,
        socket.IPV6_MULTICAST_HOPS,
        socket.IPV6_MULTICAST_LOOP,
    ),
}
SO_NO_CHECK = 11  # asm-generic/socket.h: IPv4, send UDP checksums as zero
UDP_NO_CHECK6_TX, UDP_NO_CHECK6_RX = 101, 102  # linux/udp.h: IPv6, send / accept zero ones
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
SO_MEMINFO = 55  # linux/sock_diag.h: SK_MEMINFO_* u32 array; DROPS is the ninth
_SK_MEMINFO_VARS, _SK_MEMINFO_DROPS = 9, 8
_DRAIN_BUDGET = 64  # error reports / stray datagrams read per wake-up of one socket


class TransportError(Exception):
    """The sockets could not be set up (port in use, bad address, ...)."""


class UdpTransport:
    """Receive VXLAN datagrams on ``port``; send them from per-flow source ports."""

    def __init__(
        self,
        *,
        port: int,
        local: str | None = None,
        family: int = socket.AF_INET,
        group: str | None = None,
        dev: str | None = None,
        bufsize: int = 8 << 20,
        max_ports: int = 256,
        srcport: tuple[int, int] = DEFAULT_SRCPORT_RANGE,
        chunk_max_frame: int = 1518,
        outer: Outer = DEFAULT_OUTER,
        zero_csum_rx: bool = False,
    ) -> None:
        """``zero_csum_rx``: over IPv6, accept datagrams with a zero UDP checksum
        (``udp6zerocsumrx``; IPv4 always does). ``outer.zero_csum``: send zero checksums
        (``SO_NO_CHECK`` / ``UDP_NO_CHECK6_TX`` on every send socket; no UDP GSO then).
        ``srcport``: the range chunks of a cut super-frame take their source ports from (the
        engine's); ``chunk_max_frame``: the largest chunk (the TAPs' MTU + 18); ``outer``: the
        outer TOS, TTL and DF (fixed ones are socket options; what differs per datagram, an
        ECN field or an inherited value, goes with it as a control message)."""
        if local is not None:
            family = socket.AF_INET6 if ipaddress.ip_address(local).version == 6 else family
        elif group is not None:
            family = socket.AF_INET6 if ipaddress.ip_address(group).version == 6 else family
        self.family = family
        self.port = port
        self.local = local
        self.group = group
        self.errors: Counter[str] = Counter()
        self.icmp = IcmpCounters()
        self.tx_packets = 0  # datagrams the kernel took
        self.gso_frames = 0  # TCP super-frames cut into chunks and sent
        self.gso_errors = 0  # super-frames that could not be cut (dropped)
        self._unsent = [0, 0]  # of the current send_datagrams: packets, inner bytes
        self.unsent_by_host: dict[str, tuple[int, int]] = {}  # ... and by destination
        self._srcport = srcport
        self._chunks = FrameBatch(MAX_CHUNKS, chunk_max_frame)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ep: select.epoll | None = None
        self._rx_dropped = 0
        self._watched: dict[int, socket.socket] = {}
        self._v6 = family == socket.AF_INET6
        self._ifindex = socket.if_nametoindex(dev) if dev else 0
        self.outer = outer
        self._bufsize = bufsize
        self._max_ports = max_ports
        # (source port, DF) -> socket; DF is a socket option, so with DF inherited a port has
        # one socket for each
        self._pool: OrderedDict[tuple[int, bool], socket.socket] = OrderedDict()
        # told (port, df, fd) when a source-port socket opens and (port, df, -1) before it
        # closes: the C datapath sends from these sockets itself
        self.on_port: Callable[[int, bool, int], None] | None = None
        self._fallback: socket.socket | None = None
        self.rx = socket.socket(family, socket.SOCK_DGRAM)
        try:
            # no SO_REUSEADDR: on UDP it would let a second VTEP bind the port and take the
            # traffic; "port in use" must be an error
            _set_buf(self.rx, SO_RCVBUFFORCE, socket.SO_RCVBUF, bufsize)
            any_ip = "::" if self._v6 else ""
            bind_ip = local if group is None and local is not None else any_ip
            try:
                self.rx.bind((bind_ip, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise TransportError(f"UDP port {port} is in use") from exc
                raise TransportError(f"cannot bind {bind_ip or '*'}:{port}: {exc}") from exc
            self.rx.setblocking(False)
            # the outer TOS of each datagram, for RFC 6040 ECN decapsulation
            if self._v6:
                self.rx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)
                if zero_csum_rx:
                    self.rx.setsockopt(socket.IPPROTO_UDP, UDP_NO_CHECK6_RX, 1)
            else:
                self.rx.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
            if group is not None:
                self._join(group)
            # the shared socket also proves now that `local` is an address of this host
            self._fallback = self._open(0, self.outer.df)
        except BaseException:
            self.close()
            raise

    # --- sockets ---------------------------------------------------------------------------

    def _join(self, group: str) -> None:
        try:
            if self._v6:
                mreq = socket.inet_pton(socket.AF_INET6, group) + struct.pack("I", self._ifindex)
                self.rx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
                self.rx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            else:
                self.rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, self._mreqn(group))
                self.rx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        except OSError as exc:
            raise TransportError(f"cannot join {group}: {exc}") from exc

    def _mreqn(self, group: str) -> bytes:
        return (
            socket.inet_aton(group) + socket.inet_aton("0.0.0.0") + struct.pack("i", self._ifindex)
        )

    def _open(self, sport: int, df: bool = False) -> socket.socket:
        """A send socket bound to ``sport`` (0: ephemeral) with the VTEP's IP options."""
        s = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            bind_ip = self.local or ("::" if self._v6 else "")
            if sport and self.outer.df_inherit:
                # DF is a socket option, so with DF inherited a port has two sockets, one with
                # DF and one without: both bound to it (a reuseport group only this user can
                # join; neither receives anything but ICMP errors, drained from both)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                s.bind((bind_ip, sport))
            except OSError as exc:
                if sport and exc.errno == errno.EADDRINUSE:
                    raise
                raise TransportError(f"{self.local} is not a local address: {exc}") from exc
            _set_buf(s, SO_SNDBUFFORCE, socket.SO_SNDBUF, self._bufsize)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # nothing comes back here
            s.setblocking(False)
            level, mtu_opt, ttl_opt, tos_opt, mttl_opt, loop_opt = _OPTS[self._v6]
            s.setsockopt(level, IPV6_RECVERR if self._v6 else IP_RECVERR, 1)  # but ICMP errors
            s.setsockopt(level, mtu_opt, _PMTU_DO if df else _PMTU_DONT)
            o = self.outer
            if o.zero_csum:
                if self._v6:
                    s.setsockopt(socket.IPPROTO_UDP, UDP_NO_CHECK6_TX, 1)
                else:
                    s.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
            if o.ttl:
                s.setsockopt(level, ttl_opt, o.ttl)
            s.setsockopt(level, tos_opt, o.tos)
            s.setsockopt(level, mttl_opt, o.ttl or 1)
            s.setsockopt(level, loop_opt, 0)
            if self.group is not None:
                if self._v6:
                    s.setsockopt(level, socket.IPV6_MULTICAST_IF, self._ifindex)
                else:
                    s.setsockopt(level, socket.IP_MULTICAST_IF, self._mreqn(self.group))
        except BaseException:
            s.close()
            raise
        return s

    def socket_for(self, sport: int, df: bool | None = None) -> socket.socket:
        """The send socket bound to ``sport`` (with DF set or not: ``df``, default the VTEP's),
        opened on first use, least recently used closed past ``max_ports``; the shared
        ephemeral-port socket if ``sport`` cannot be bound."""
        key = (sport, self.outer.df if df is None else df)
        s = self._pool.get(key)
        if s is not None:
            self._pool.move_to_end(key)
            return s
        try:
            s = self._open(sport, key[1])
        except OSError:
            self.errors["srcport-unavailable"] += 1
            assert self._fallback is not None
            return self._fallback
        self._pool[key] = s
        self._watch(s)
        if self.on_port is not None:
            self.on_port(sport, key[1], s.fileno())
        if len(self._pool) > self._max_ports:
            (old_port, old_df), old = self._pool.popitem(last=False)
            if self.on_port is not None:
                self.on_port(old_port, old_df, -1)
            self._unwatch(old)
            old.close()
        return s

    # --- ICMP errors -------------------------------------------------------------------------

    def watch_errors(
        self, loop: asyncio.AbstractEventLoop, emit: Callable[[IcmpError], None] | None = None
    ) -> None:
        """Drain each send socket's error queue when it becomes readable, on ``loop``: ICMP
        errors are counted in ``icmp`` (per remote) and reported through ``emit``.

        The send sockets are watched through an epoll set of their own, whose fd the loop
        watches: an error makes a socket report EPOLLERR, on which libuv (uvloop) would stop
        watching it for good; the epoll fd itself only ever becomes readable."""
        self._loop = loop
        self.icmp.emit = emit
        if self._ep is None:
            self._ep = select.epoll()
            loop.add_reader(self._ep.fileno(), self._on_errors)
        for s in self._send_sockets():
            self._watch(s)

    def _send_sockets(self) -> list[socket.socket]:
        return [*self._pool.values(), *([self._fallback] if self._fallback else [])]

    def _watch(self, s: socket.socket) -> None:
        if self._ep is not None and s.fileno() not in self._watched:
            self._watched[s.fileno()] = s
            self._ep.register(s.fileno(), select.EPOLLIN)  # and EPOLLERR, always

    def _unwatch(self, s: socket.socket) -> None:
        if self._watched.pop(s.fileno(), None) is not None and self._ep is not None:
            self._ep.unregister(s.fileno())

    def _on_errors(self) -> None:
        if self._ep is None:
            return
        for fd, _ev in self._ep.poll(0, 64):
            s = self._watched.get(fd)
            if s is not None:
                self._drain(s)

    def _drain(self, s: socket.socket) -> None:
        """A send socket is readable: read its error queue, then anything sent to it (nothing
        should be: counted as ``stray`` and dropped), at most _DRAIN_BUDGET of each per call."""
        assert self._loop is not None
        now = self._loop.time()
        for _ in range(_DRAIN_BUDGET):
            try:
                _data, anc, _flags, addr = s.recvmsg(64, 512, MSG_ERRQUEUE)
            except OSError:
                break  # empty (EAGAIN)
            rep = parse_report(anc)
            if rep is not None:
                self.icmp.record(addr[0] if addr else None, rep, now)
        for _ in range(_DRAIN_BUDGET):
            try:
                s.recv(1)
            except BlockingIOError:
                break
            except OSError:  # the socket's error, set by a report the queue could not hold
                self.icmp.unqueued += 1
                break
            self.errors["stray"] += 1
        # an error the small error queue could not hold leaves only the socket's error set:
        # clear it, or the socket would stay readable
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.icmp.unqueued += 1

    def rx_dropped(self) -> int:
        """Datagrams the kernel dropped because the receiving socket's buffer was full (its
        ``sk_drops``, from ``SO_MEMINFO``), since it was opened."""
        if self.rx.fileno() < 0:
            return self._rx_dropped  # closed: as it was at close()
        try:
            raw = self.rx.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * _SK_MEMINFO_VARS)
        except OSError:
            return self._rx_dropped
        self._rx_dropped = int(struct.unpack_from("=I", raw, 4 * _SK_MEMINFO_DROPS)[0])
        return self._rx_dropped

    @property
    def sndbuf(self) -> int:
        """The buffer size asked for each send socket (SO_SNDBUFFORCE, else SO_SNDBUF)."""
        return self._bufsize

    def fileno(self) -> int:
        return self.rx.fileno()

    def enable_gro(self) -> bool:
        """Turn on UDP_GRO on the receiving socket (Linux 5.0+): one receive may then hold
        several datagrams of a flow back to back, with their size in a control message. Only
        the C receive pump reads such a socket. False if the kernel refuses it."""
        try:
            self.rx.setsockopt(socket.IPPROTO_UDP, UDP_GRO, 1)
        except OSError:
            return False
        return True

    # --- receiving -------------------------------------------------------------------------

    def recv_batch(self, batch: FrameBatch, sources: list[str]) -> int:
        """Read datagrams into ``batch`` until EAGAIN or full (one batched syscall per 64);
        append each source IP. Datagrams too large for a slot are counted, never cut."""
        got = 0
        while batch.count < batch.capacity:
            try:
                n, truncated = batchio.backend.udp_recv(self.rx, batch, sources)
            except OSError as exc:  # ICMP errors surface here (ECONNREFUSED, ...): count them
                self._count(exc.errno)
                continue
            if truncated:
                self.errors["truncated"] += truncated
            got += n
            if n + truncated == 0:
                break
        return got

    # --- sending ---------------------------------------------------------------------------

    def send(self, d: Datagram, batch: FrameBatch | None = None) -> bool:
        """Send one datagram from its flow's source port, with the outer fields of its slot of
        ``batch`` (if it has one); False (and counted) if refused."""
        o = self.outer
        if batch is not None and d.slot >= 0:
            tos, ttl, df = batch.tos[d.slot], batch.ttl[d.slot], bool(batch.df[d.slot])
        else:
            tos, ttl, df = o.tos, 0, o.df
        sock = self.socket_for(d.sport, df)
        anc = batchio.outer_cmsgs(self._v6, tos, ttl, o)
        addr = (d.host, d.port)
        try:
            try:
                sock.sendmsg([d.payload], anc, 0, addr)
            except OSError as exc:
                if not batchio.icmp_pending(sock, exc.errno):
                    raise
                sock.sendmsg([d.payload], anc, 0, addr)  # once more: see batchio.icmp_pending
        except OSError as exc:
            self._count(exc.errno)
            self._not_sent(1, len(d.payload) - VXLAN_HLEN, d.host)
            return False
        self.tx_packets += 1
        return True

    def send_datagrams(self, batch: FrameBatch, datagrams: Iterable[Datagram]) -> tuple[int, int]:
        """Send what the engine decided for ``batch``: runs of consecutive slots to one
        destination in one batched send per source port, TCP super-frames cut into chunks and
        sent as UDP GSO, copies (a per-remote VNI override) one by one. Returns the packets
        and inner bytes the kernel did not take (counted in ``errors``; a super-frame is one
        packet, not taken unless all its chunks were), which the engine counted as sent
        (``Engine.not_sent``): as the C datapath counts (``vx_count_send``)."""
        self._unsent = [0, 0]
        self.unsent_by_host.clear()
        first = count = port = 0
        host = ""
        for d in datagrams:
            if d.slot >= 0 and batch.gso_type[d.slot] & 0x7F:
                if count:
                    self.send_slots(batch, first, count, port, host)
                    count = 0
                self._send_super(batch, d)
            elif d.slot < 0 or not isinstance(d.payload, memoryview):
                self.send(d, batch)
            elif count and d.slot == first + count and d.host == host and d.port == port:
                count += 1
            else:
                if count:
                    self.send_slots(batch, first, count, port, host)
                first, count, host, port = d.slot, 1, d.host, d.port
        if count:
            self.send_slots(batch, first, count, port, host)
        return self._unsent[0], self._unsent[1]

    def _not_sent(self, packets: int, nbytes: int, host: str) -> None:
        self._unsent[0] += packets
        self._unsent[1] += nbytes
        n, b = self.unsent_by_host.get(host, (0, 0))
        self.unsent_by_host[host] = (n + packets, b + nbytes)

    def send_slots(self, batch: FrameBatch, first: int, n: int, port: int, host: str) -> int:
        """Send slots ``first..first+n-1`` of ``batch`` (as ``encap_batch`` left them) to
        ``host:port``, each from its ``batch.sport`` (with its DF): a batched syscall per run of
        one socket."""
        sent = 0
        end = first + n
        i = first
        sport, df, o = batch.sport, batch.df, self.outer
        while i < end:
            j = i + 1
            while j < end and sport[j] == sport[i] and df[j] == df[i]:
                j += 1
            sock = self.socket_for(sport[i], bool(df[i]))
            got = self._done(batchio.backend.udp_send(sock, batch, i, j - i, host, port, o), j - i)
            sent += got
            if got < j - i:
                lost = range(i + got, j)
                nbytes = sum(batch.payload_len[k] - VXLAN_HLEN for k in lost)
                self._not_sent(len(lost), nbytes, host)
            i = j
        return sent

    def _send_super(self, batch: FrameBatch, d: Datagram) -> None:
        """Cut the TCP super-frame behind ``d`` into MTU-sized chunks and send them to d's
        destination from the flow's source port (the engine decided once for all of them)."""
        lo, hi = self._srcport
        sock = self.socket_for(d.sport, bool(batch.df[d.slot]))
        sent, k = batchio.backend.send_super(
            sock, batch, d.slot, d.vni, self._chunks, d.host, d.port, lo, hi, self.outer
        )
        if k == 0:
            self.gso_errors += 1
            self._not_sent(1, batch.payload_len[d.slot] - VXLAN_HLEN, d.host)
            return
        self.gso_frames += 1
        if self._done(sent, k) < k:
            self._not_sent(1, batch.payload_len[d.slot] - VXLAN_HLEN, d.host)

    def _done(self, sent: int, n: int) -> int:
        if sent < 0:
            self._count(-sent, n)
            return 0
        if sent < n:
            self.errors["EAGAIN"] += n - sent  # socket buffer full: the rest is dropped
        self.tx_packets += sent
        return sent

    def count_error(self, err: int) -> None:
        """Count a socket error (an errno) met outside this class (the C datapath)."""
        self._count(err)

    def _count(self, err: int | None, n: int = 1) -> None:
        self.errors[errno.errorcode.get(err or 0, str(err))] += n

    def close(self) -> None:
        self.rx_dropped()  # the last count, for the final stats
        if self.on_port is not None:
            for port, df in self._pool:
                self.on_port(port, df, -1)
        socks = [self.rx, *self._send_sockets()]
        if self._ep is not None:
            if self._loop is not None:
                try:
                    self._loop.remove_reader(self._ep.fileno())
                except (ValueError, OSError, RuntimeError):
                    pass  # the loop is closed already
            self._ep.close()
            self._ep = None
        self._watched.clear()
        self._loop = None
        self._pool.clear()
        for s in socks:
            try:
                s.close()
            except OSError:
                pass


def _set_buf(sock: socket.socket, force: int, plain: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:  # no CAP_NET_ADMIN: the plain option, capped by net.core.*mem_max
        sock.setsockopt(socket.SOL_SOCKET, plain, size)
