"""Batched syscalls of the fast path: the C version (``_fastio.c``) or its Python twin.

The backend follows :mod:`vxlanpy.kernels` (``VXLANPY_PURE_PYTHON`` / ``VXLANPY_REQUIRE_C``).
Both send the payloads (VXLAN header + frame, ``batch.payload_len``) of slots
``first .. first+n-1`` to ``host:port`` on the UDP socket ``sock`` and return how many
datagrams the kernel took (``-errno`` if none):

- ``send_batch``: one datagram per slot (``sendmmsg``);
- ``send_gso``: the same datagrams as one UDP GSO send (``UDP_SEGMENT``); all payloads but the
  last must have the first one's length (true of TSO segments). The twin sends them one by one:
  what reaches the wire is the same.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from array import array
from typing import Any

from . import kernels
from .batch import FrameBatch

__all__ = ["send_batch", "send_gso", "tap_write", "recv_batch", "icmp_pending", "BACKEND", "load"]

_GONE = {errno.EBADFD, errno.EIO, errno.ENODEV, errno.ENXIO, errno.EBADF}
_NOT_ICMP = {errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR, None}
_MSG_TRUNC = int(socket.MSG_TRUNC)
_VXLAN_HLEN = 8
_TRUNCATED = 0xFFFFFFFF  # vx_recv_batch's mark for a datagram larger than its slot


def icmp_pending(sock: socket.socket, err: int | None) -> bool:
    """True if the send error ``err`` may be a queued ICMP report surfacing on ``sock`` (it has
    IP_RECVERR: such a report fails the next send once; see ``_fastio.c``): try again, once."""
    if err in _NOT_ICMP:
        return False
    p = select.poll()
    p.register(sock.fileno(), 0)
    return any(ev & select.POLLERR for _fd, ev in p.poll(0))


def _py_send_batch(
    sock: socket.socket, batch: FrameBatch, first: int, n: int, port: int, host: str
) -> int:
    _check(batch, first, n)
    mv = memoryview(batch.buf)
    sent = 0
    retried = False
    i = first
    while i < first + n:
        off = batch.header_offset(i)
        try:
            sock.sendto(mv[off : off + batch.payload_len[i]], socket.MSG_DONTWAIT, (host, port))
        except OSError as exc:
            if not retried and icmp_pending(sock, exc.errno):
                retried = True
                continue
            return sent if sent else -(exc.errno or errno.EIO)
        retried = False
        sent += 1
        i += 1
    return sent


_GSO_FIELDS = struct.Struct("=BBHHHH")  # virtio-net header: flags, type, hdr_len, size, cs...


def _gso_header(buf: bytearray, off: int, length: int, mtu: int, hoff: int) -> None:
    """Twin of _fastio.c's gso_header: a GSO virtio-net header at ``hoff`` for the oversized
    TCP frame at ``off`` (and the pseudo-header sum in its checksum field), else nothing."""
    f = memoryview(buf)[off : off + length]
    if length < 14 + 40:
        return
    et = (f[12] << 8) | f[13]
    if et == 0x0800 and f[14] >> 4 == 4:
        iphl = (f[14] & 15) * 4
        tot = (f[16] << 8) | f[17]
        if iphl < 20 or tot > length - 14 or tot < iphl + 20 or f[23] != 6:
            return
        if ((f[20] << 8) | f[21]) & 0x3FFF:
            return
        plen = tot - iphl
        addr = bytes(f[26:34])
        gso_type = 1
    elif et == 0x86DD and f[14] >> 4 == 6:
        iphl = 40
        plen = (f[18] << 8) | f[19]
        if f[20] != 6 or plen > length - 14 - 40 or plen < 20:
            return
        addr = bytes(f[22:54])
        gso_type = 4
    else:
        return
    l4 = 14 + iphl
    thl = (f[l4 + 12] >> 4) * 4
    if thl < 20 or thl > plen or mtu <= iphl + thl:
        return
    mss = mtu - iphl - thl
    if plen - thl <= mss or mss > 0xFFFF:
        return
    total = sum(struct.unpack(f"!{len(addr) // 2}H", addr)) + 6 + plen
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    struct.pack_into("!H", buf, off + l4 + 16, total)
    _GSO_FIELDS.pack_into(buf, hoff, 1, gso_type, l4 + thl, mss, l4, 16)


def _py_tap_write(
    fd: int, batch: FrameBatch, slots: list[int], vnet: int, mtu: int = 0
) -> tuple[int, int]:
    """Write the frames of ``slots`` to the TAP ``fd`` with a virtio-net header of ``vnet``
    bytes in front of each: zero, or for a TCP frame longer than ``mtu`` + 14 a GSO header.
    Returns (written, refused); ``(-errno, refused)`` if the device is gone."""
    mv = memoryview(batch.buf)
    written = refused = 0
    zero = bytes(vnet)
    for i in slots:
        off = batch.frame_offset(i) - vnet
        length = batch.frame_len[i]
        if vnet:
            batch.buf[off : off + vnet] = zero
            if mtu and length > mtu + 14:
                _gso_header(batch.buf, off + vnet, length, mtu, off)
        try:
            os.write(fd, mv[off : off + vnet + length])
        except OSError as exc:
            if exc.errno in _GONE:
                return -(exc.errno or errno.EIO), refused
            refused += 1
            continue
        written += 1
    return written, refused


def _py_recv_batch(sock: socket.socket, batch: FrameBatch, sources: list[str]) -> tuple[int, int]:
    """Receive datagrams into ``batch`` from slot ``batch.count`` until none is waiting or the
    batch is full; append each source IP. Returns (received, truncated); a datagram larger
    than its slot is not kept. Socket errors (ICMP reports) raise OSError."""
    got = truncated = 0
    while batch.count < batch.capacity:
        i = batch.count
        try:
            n, _anc, flags, addr = sock.recvmsg_into([batch.payload_buffer(i)])
        except BlockingIOError:
            break
        if flags & _MSG_TRUNC:
            truncated += 1
            continue
        batch.payload_len[i] = n
        batch.count += 1
        sources.append(addr[0])
        got += 1
    return got, truncated


ADDR_LEN = 28  # room for a sockaddr_in6 per slot (vx_recv_batch, FrameBatch.addrs)


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


class _CffiIO:
    name = "cffi"

    def __init__(self, mod: Any) -> None:
        self._ffi = mod.ffi
        self._lib = mod.lib
        self._addrs: dict[tuple[int, str, int], Any] = {}
        self._names: dict[bytes, str] = {}

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

    def _views(self, batch: FrameBatch) -> tuple[Any, Any]:
        v = batch.views.get("cffio")
        if v is None:
            fb = self._ffi.from_buffer
            v = (fb("uint8_t[]", batch.buf), fb("uint32_t[]", batch.payload_len))
            batch.views["cffio"] = v
        return v

    def _send(
        self,
        fn: Any,
        sock: socket.socket,
        batch: FrameBatch,
        first: int,
        n: int,
        port: int,
        host: str,
    ) -> int:
        _check(batch, first, n)
        buf, plen = self._views(batch)
        addr = self._addr(sock.family, host, port)
        return int(
            fn(sock.fileno(), buf, batch.slot, batch.headroom, first, n, plen, addr, len(addr))
        )

    def send_batch(
        self, sock: socket.socket, batch: FrameBatch, first: int, n: int, port: int, host: str
    ) -> int:
        return self._send(self._lib.vx_send_batch, sock, batch, first, n, port, host)

    def send_gso(
        self, sock: socket.socket, batch: FrameBatch, first: int, n: int, port: int, host: str
    ) -> int:
        return self._send(self._lib.vx_send_gso, sock, batch, first, n, port, host)

    def tap_write(
        self, fd: int, batch: FrameBatch, slots: list[int], vnet: int, mtu: int = 0
    ) -> tuple[int, int]:
        if len(slots) > batch.capacity:
            raise ValueError("more slots than the batch holds")
        buf, _plen = self._views(batch)
        ex = batch.views.get("cffio-tap")
        if ex is None:
            arr = array("I", bytes(4 * batch.capacity))
            ex = (
                arr,
                self._ffi.from_buffer("uint32_t[]", arr),
                self._ffi.from_buffer("uint32_t[]", batch.frame_len),
                self._ffi.new("uint32_t[1]"),
            )
            batch.views["cffio-tap"] = ex
        arr, carr, flen, err = ex
        for k, i in enumerate(slots):
            if not 0 <= i < batch.capacity:
                raise ValueError(f"slot {i} outside the batch")
            arr[k] = i
        err[0] = 0
        n = int(
            self._lib.vx_tap_write(
                fd, buf, batch.slot, batch.headroom, carr, len(slots), flen, vnet, mtu, err
            )
        )
        return n, int(err[0])

    def recv_batch(
        self, sock: socket.socket, batch: FrameBatch, sources: list[str]
    ) -> tuple[int, int]:
        buf, plen = self._views(batch)
        ex = batch.views.get("cffio-rx")
        if ex is None:
            addrs = bytearray(ADDR_LEN * batch.capacity)
            ex = (addrs, self._ffi.from_buffer("uint8_t[]", addrs), self._ffi.new("uint32_t[1]"))
            batch.views["cffio-rx"] = ex
        addrs, caddrs, trunc = ex
        trunc[0] = 0
        first = batch.count
        r = int(
            self._lib.vx_recv_batch(
                sock.fileno(),
                buf,
                batch.slot,
                batch.headroom,
                first,
                batch.capacity,
                batch.max_frame + _VXLAN_HLEN,
                plen,
                caddrs,
                self._ffi.NULL,
                trunc,
            )
        )
        if r < 0:
            raise OSError(-r, os.strerror(-r))
        kept = 0
        for j in range(r):
            i = first + j
            if batch.payload_len[i] == _TRUNCATED:
                batch.payload_len[i] = 0
                continue  # too large for its slot: dropped, counted by the caller
            name = source_name(addrs, i, self._names)
            if first + kept != i:  # close the gap a dropped datagram left
                self._move(batch, i, first + kept)
            sources.append(name)
            kept += 1
        batch.count = first + kept
        return kept, int(trunc[0])

    @staticmethod
    def _move(batch: FrameBatch, src: int, dst: int) -> None:
        n = batch.payload_len[src]
        so, do = batch.header_offset(src), batch.header_offset(dst)
        batch.buf[do : do + n] = batch.buf[so : so + n]
        batch.payload_len[dst] = n


class _PyIO:
    name = "python"
    send_batch = staticmethod(_py_send_batch)
    send_gso = staticmethod(_py_send_batch)
    tap_write = staticmethod(_py_tap_write)
    recv_batch = staticmethod(_py_recv_batch)


def load(name: str | None = None) -> _CffiIO | _PyIO:
    """The backend matching :func:`vxlanpy.kernels.load` for the same ``name``."""
    chosen = kernels.load(name)
    if chosen.name == "python":
        return _PyIO()
    from . import _fastpath_c  # type: ignore[attr-defined]

    return _CffiIO(_fastpath_c)


backend = load()
BACKEND = backend.name
send_batch = backend.send_batch
send_gso = backend.send_gso
tap_write = backend.tap_write
recv_batch = backend.recv_batch
