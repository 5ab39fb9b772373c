"""Batched device and socket I/O: the C version (csrc/tap.c, csrc/udp.c) or its Python twin.

The backend follows :mod:`vxlanpy.kernels` (``VXLANPY_PURE_PYTHON`` / ``VXLANPY_REQUIRE_C``).
The TAP (io/tap.py) and the UDP transport (io/udp.py) do their I/O through these, so that the
virtio-net header and UDP GSO stay below them:

``backend`` (or ``load(name)``) has these methods:

- ``tap_read(fd, vnet, batch) -> (n, completed)``: frames into ``batch`` from slot
  ``batch.count`` until the device would block or the batch is full (``count`` advanced), each
  with its offload state from the virtio-net header; partial checksums of plain frames are
  completed (``completed`` of them). ``n`` is ``-errno`` if the device is gone;
- ``tap_write(fd, vnet, mtu, batch, slots) -> (written, refused)``: frames to the device, a
  verified oversized TCP frame with a GSO header (``written`` is ``-errno`` if it is gone);
- ``udp_recv(sock, batch, sources) -> (received, truncated)``: datagrams into ``batch`` from
  ``batch.count`` (one ``recvmmsg`` per 64), each source IP appended to ``sources`` and its
  outer TOS put in ``batch.tos`` (if the socket reports it: ``IP_RECVTOS``); a datagram larger
  than its slot is not kept. Socket errors (ICMP reports) raise OSError;
- ``udp_send(sock, batch, first, n, host, port, outer=None) -> int``: the payloads of slots
  ``first..first+n-1`` to ``host:port`` (runs of equal size as UDP GSO sends); how many the
  kernel took, ``-errno`` if none. With ``outer`` (what the socket's options are), a slot whose
  ``batch.tos`` / ``batch.ttl`` differ from it is sent with them as control messages. The twin
  sends them one by one: the same reaches the wire;
- ``send_super(sock, batch, i, vni, scratch, host, port, lo, hi, outer=None) -> (sent,
  chunks)``: the TCP super-frame in slot ``i`` cut into ``chunks`` chunks (in ``scratch``; 0:
  it cannot be cut), encapsulated for ``vni``, their outer fields set as ``outer`` says (and
  the super-frame's VXLAN-GBP policy, if its header has one), and sent as ``udp_send`` does
  (``sent`` as it returns).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from array import array
from typing import Any

from .. import kernels
from .._offload_py import CSUM_COMPLETED, complete_frame
from ..abi import ADDR_LEN, GBP_G, LEN_TRUNCATED, VNET_HLEN, Offload
from ..batch import FrameBatch
from ..headers import DEFAULT_OUTER, Outer

__all__ = [
    "icmp_pending",
    "outer_cmsgs",
    "raw_sockaddr",
    "source_name",
    "BACKEND",
    "backend",
    "load",
]

_GONE = {errno.EBADFD, errno.EIO, errno.ENODEV, errno.ENXIO, errno.EBADF}
_NOT_ICMP = {errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR, None}
_MSG_TRUNC = int(socket.MSG_TRUNC)
_VXLAN_HLEN = 8
_VNET = struct.Struct("=BBH")  # flags, gso_type, hdr_len: what a read takes of the header
_VERIFIED = Offload.CSUM_OK | Offload.COALESCED
_INT = struct.Struct("=i")
_ANC = socket.CMSG_SPACE(4) * 2
_TOS_CMSG = {(socket.IPPROTO_IP, socket.IP_TOS), (socket.IPPROTO_IPV6, socket.IPV6_TCLASS)}


def icmp_pending(sock: socket.socket, err: int | None) -> bool:
    """True if the send error ``err`` may be a queued ICMP report surfacing on ``sock``: the send
    sockets have IP_RECVERR, and such a report fails the next send once, whichever remote it was
    for (csrc/udp.c does the same): try again, once. The report is counted from the queue."""
    if err in _NOT_ICMP:
        return False
    p = select.poll()
    p.register(sock.fileno(), 0)
    return any(ev & select.POLLERR for _fd, ev in p.poll(0))


def outer_cmsgs(v6: bool, tos: int, ttl: int, outer: Outer | None) -> list[tuple[int, int, bytes]]:
    """The control messages a datagram with outer ``tos`` and ``ttl`` (0: the socket's) needs
    on a socket set up as ``outer`` says (none: the socket's options are what it needs)."""
    if outer is None:
        return []
    anc = []
    level = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
    if tos != outer.tos:
        anc.append((level, socket.IPV6_TCLASS if v6 else socket.IP_TOS, _INT.pack(tos)))
    if ttl and ttl != outer.ttl:
        anc.append((level, socket.IPV6_HOPLIMIT if v6 else socket.IP_TTL, _INT.pack(ttl)))
    return anc


def raw_sockaddr(family: int, host: str, port: int) -> bytes:
    """The C sockaddr_in / sockaddr_in6 of ``host:port`` (a ``%scope`` suffix is ignored)."""
    p = struct.pack("!H", port)
    if family == socket.AF_INET6:
        ip = socket.inet_pton(socket.AF_INET6, host.split("%")[0])
        return struct.pack("=H", family) + p + bytes(4) + ip + bytes(4)
    return struct.pack("=H", family) + p + socket.inet_aton(host) + bytes(8)


def source_name(addrs: bytearray, i: int, names: dict[bytes, str]) -> str:
    """The IP of the sockaddr recorded for slot ``i`` in ``addrs``, as text; ``names`` caches
    the conversions (cleared past 4096)."""
    off = i * ADDR_LEN
    fam = struct.unpack_from("=H", addrs, off)[0]
    if fam == socket.AF_INET6:
        raw = bytes(addrs[off + 8 : off + 24])
    else:
        raw = bytes(addrs[off + 4 : off + 8])
    name = names.get(raw)
    if name is None:
        name = socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)
        if len(names) > 4096:
            names.clear()
        names[raw] = name
    return name


def _check(batch: FrameBatch, first: int, n: int) -> None:
    if first < 0 or n < 0 or first + n > batch.capacity:
        raise ValueError(f"slots {first}..{first + n - 1} outside the batch")


class _IO:
    """What both backends share: a super-frame is sent as its chunks."""

    def udp_send(
        self,
        sock: socket.socket,
        batch: FrameBatch,
        first: int,
        n: int,
        host: str,
        port: int,
        outer: Outer | None = None,
    ) -> int:
        raise NotImplementedError

    def prepare_super(
        self,
        batch: FrameBatch,
        i: int,
        vni: int,
        scratch: FrameBatch,
        lo: int,
        hi: int,
        outer: Outer | None = None,
    ) -> int:
        """Cut the super-frame in slot ``i`` into ``scratch`` (slots 0..), encapsulate the
        chunks for ``vni`` and set their outer fields; how many (0: it cannot be cut)."""
        raise NotImplementedError

    def send_super(
        self,
        sock: socket.socket,
        batch: FrameBatch,
        i: int,
        vni: int,
        scratch: FrameBatch,
        host: str,
        port: int,
        lo: int,
        hi: int,
        outer: Outer | None = None,
    ) -> tuple[int, int]:
        _check(batch, i, 1)
        k = self.prepare_super(batch, i, vni, scratch, lo, hi, outer)
        if k == 0:
            return 0, 0
        return self.udp_send(sock, scratch, 0, k, host, port, outer), k


# --- the Python twin ----------------------------------------------------------------------


class _PyIO(_IO):
    name = "python"

    def __init__(self) -> None:
        self._kernels = kernels.load("python")

    def tap_read(self, fd: int, vnet: int, batch: FrameBatch) -> tuple[int, int]:
        got = completed = 0
        mv = memoryview(batch.buf)
        while batch.count < batch.capacity:
            i = batch.count
            off = batch.frame_offset(i) - vnet
            try:
                n = os.readv(fd, [mv[off : off + vnet + batch.max_frame]])
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _GONE:
                    return -(exc.errno or errno.EIO), completed
                break
            if n <= vnet:
                break
            batch.offload[i] = batch.gso_type[i] = batch.gso_size[i] = 0
            batch.frame_len[i] = n - vnet
            batch.count += 1
            got += 1
            if vnet:
                flags, gso_type, _h = _VNET.unpack_from(batch.buf, off)
                batch.gso_type[i] = gso_type
                batch.gso_size[i] = struct.unpack_from("=H", batch.buf, off + 4)[0]
                if flags & 1:
                    batch.offload[i] = Offload.NEEDS_CSUM
                    if not gso_type:
                        completed += complete_frame(batch.frame(i)) == CSUM_COMPLETED
        return got, completed

    def tap_write(
        self, fd: int, vnet: int, mtu: int, batch: FrameBatch, slots: list[int]
    ) -> tuple[int, int]:
        mv = memoryview(batch.buf)
        written = refused = 0
        zero = bytes(vnet)
        for i in slots:
            off = batch.frame_offset(i) - vnet
            length = batch.frame_len[i]
            if vnet:
                batch.buf[off : off + vnet] = zero
                if mtu and length > mtu + 14 and batch.offload[i] & _VERIFIED:
                    self._kernels.vnet_gso(batch.buf, off + vnet, length, mtu, off)
            try:
                os.write(fd, mv[off : off + vnet + length])
            except OSError as exc:
                if exc.errno in _GONE:
                    return -(exc.errno or errno.EIO), refused
                refused += 1
                continue
            written += 1
        return written, refused

    def udp_recv(
        self, sock: socket.socket, batch: FrameBatch, sources: list[str]
    ) -> tuple[int, int]:
        got = truncated = 0
        while batch.count < batch.capacity:
            i = batch.count
            try:
                n, anc, flags, addr = sock.recvmsg_into([batch.payload_buffer(i)], _ANC)
            except BlockingIOError:
                break
            if flags & _MSG_TRUNC:
                truncated += 1
                continue
            batch.payload_len[i] = n
            batch.offload[i] = 0
            batch.tos[i] = 0
            for level, kind, data in anc:
                if (level, kind) in _TOS_CMSG and data:
                    batch.tos[i] = data[0] if len(data) < 4 else _INT.unpack_from(data)[0] & 0xFF
            batch.count += 1
            sources.append(addr[0])
            got += 1
        return got, truncated

    def udp_send(
        self,
        sock: socket.socket,
        batch: FrameBatch,
        first: int,
        n: int,
        host: str,
        port: int,
        outer: Outer | None = None,
    ) -> int:
        _check(batch, first, n)
        mv = memoryview(batch.buf)
        v6 = sock.family == socket.AF_INET6
        sent = 0
        retried = False
        i = first
        while i < first + n:
            off = batch.header_offset(i)
            anc = outer_cmsgs(v6, batch.tos[i], batch.ttl[i], outer)
            data = mv[off : off + batch.payload_len[i]]
            try:
                sock.sendmsg([data], anc, socket.MSG_DONTWAIT, (host, port))
            except OSError as exc:
                if not retried and icmp_pending(sock, exc.errno):
                    retried = True
                    continue
                return sent if sent else -(exc.errno or errno.EIO)
            retried = False
            sent += 1
            i += 1
        return sent

    def prepare_super(
        self,
        batch: FrameBatch,
        i: int,
        vni: int,
        scratch: FrameBatch,
        lo: int,
        hi: int,
        outer: Outer | None = None,
    ) -> int:
        scratch.clear()
        k = self._kernels.tso_segment(batch, i, batch.gso_size[i], scratch)
        for j in range(k):
            scratch.vni[j] = vni
        if k:
            self._kernels.encap_batch(scratch, lo, hi)
            self._kernels.outer_fields(scratch, outer or DEFAULT_OUTER)
            h = batch.header_offset(i)
            if batch.buf[h] & GBP_G:  # the chunks carry the super-frame's group policy
                for j in range(k):
                    o = scratch.header_offset(j)
                    scratch.buf[o : o + 4] = batch.buf[h : h + 4]
        return k


# --- the C version ------------------------------------------------------------------------


class _CffiIO(kernels.Native, _IO):
    name = "cffi"

    def __init__(self, mod: Any) -> None:
        super().__init__(mod)
        self._addrs: dict[tuple[int, str, int], Any] = {}
        self._names: dict[bytes, str] = {}
        self._u32 = self._ffi.new("uint32_t[2]")
        self._no_gso = self._ffi.new("int32_t *")

    def _b(self, batch: FrameBatch) -> Any:
        return kernels.cbatch(self.mod, batch)

    def _addr(self, family: int, host: str, port: int) -> Any:
        key = (family, host, port)
        a = self._addrs.get(key)
        if a is None:
            raw = raw_sockaddr(family, host, port)
            if len(self._addrs) > 4096:
                self._addrs.clear()
            a = self._ffi.new(f"uint8_t[{len(raw)}]", raw)  # exact sockaddr length
            self._addrs[key] = a
        return a

    def tap_read(self, fd: int, vnet: int, batch: FrameBatch) -> tuple[int, int]:
        if vnet and vnet < VNET_HLEN:
            raise ValueError(f"a virtio-net header is at least {VNET_HLEN} bytes")
        self._u32[0] = 0
        n = int(self._lib.vx_tap_read(fd, vnet, self._b(batch), batch.count, self._u32))
        if n > 0:
            batch.count += n
        return n, int(self._u32[0])

    def tap_write(
        self, fd: int, vnet: int, mtu: int, batch: FrameBatch, slots: list[int]
    ) -> tuple[int, int]:
        if len(slots) > batch.capacity:
            raise ValueError("more slots than the batch holds")
        ex = batch.views.get("tap_write")
        if ex is None:
            arr = array("I", bytes(4 * batch.capacity))
            ex = (arr, self._ffi.from_buffer("uint32_t[]", arr))
            batch.views["tap_write"] = ex
        arr, carr = ex
        for k, i in enumerate(slots):
            if not 0 <= i < batch.capacity:
                raise ValueError(f"slot {i} outside the batch")
            arr[k] = i
        self._u32[0] = 0
        n = int(self._lib.vx_tap_write(fd, vnet, mtu, self._b(batch), carr, len(slots), self._u32))
        return n, int(self._u32[0])

    def udp_recv(
        self, sock: socket.socket, batch: FrameBatch, sources: list[str]
    ) -> tuple[int, int]:
        self._u32[0] = 0
        first = batch.count
        r = int(
            self._lib.vx_udp_recv(
                sock.fileno(), self._b(batch), first, batch.capacity, 0, self._u32
            )
        )
        if r < 0:
            raise OSError(-r, os.strerror(-r))
        kept = 0
        for j in range(r):
            i = first + j
            if batch.payload_len[i] == LEN_TRUNCATED:
                batch.payload_len[i] = 0
                continue  # too large for its slot: dropped, counted by the caller
            name = source_name(batch.addrs, i, self._names)
            if first + kept != i:  # close the gap a dropped datagram left
                self._move(batch, i, first + kept)
            sources.append(name)
            kept += 1
        batch.count = first + kept
        return kept, int(self._u32[0])

    @staticmethod
    def _move(batch: FrameBatch, src: int, dst: int) -> None:
        n = batch.payload_len[src]
        so, do = batch.header_offset(src), batch.header_offset(dst)
        batch.buf[do : do + n] = batch.buf[so : so + n]
        batch.payload_len[dst] = n
        batch.addrs[dst * ADDR_LEN : (dst + 1) * ADDR_LEN] = batch.addrs[
            src * ADDR_LEN : (src + 1) * ADDR_LEN
        ]

    def _outer(self, outer: Outer | None) -> Any:
        return self._ffi.NULL if outer is None else kernels.c_outer(self.mod, outer)

    def udp_send(
        self,
        sock: socket.socket,
        batch: FrameBatch,
        first: int,
        n: int,
        host: str,
        port: int,
        outer: Outer | None = None,
    ) -> int:
        _check(batch, first, n)
        addr = self._addr(sock.family, host, port)
        o = self._outer(outer)
        fd, b = sock.fileno(), self._b(batch)
        return int(self._lib.vx_udp_send(fd, b, first, n, addr, len(addr), self._no_gso, o))

    def prepare_super(
        self,
        batch: FrameBatch,
        i: int,
        vni: int,
        scratch: FrameBatch,
        lo: int,
        hi: int,
        outer: Outer | None = None,
    ) -> int:
        o = kernels.c_outer(self.mod, outer or DEFAULT_OUTER)
        return int(self._lib.vx_super_prepare(self._b(batch), i, vni, self._b(scratch), lo, hi, o))


def load(name: str | None = None) -> _CffiIO | _PyIO:
    """The backend matching :func:`vxlanpy.kernels.load` for the same ``name``."""
    mod = kernels.native(name)
    return _PyIO() if mod is None else _CffiIO(mod)


backend = load()  # the environment's choice: io/tap.py and io/udp.py do their I/O through it
BACKEND = backend.name
