"""Batched syscalls of the fast path: the C version (``_fastio.c``) or its Python twin.

The backend follows :mod:`vxlanpy.fastpath` (``VXLANPY_PURE_PYTHON`` / ``VXLANPY_REQUIRE_C``).
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
import socket
import struct
from typing import Any

from . import fastpath
from .batch import FrameBatch

__all__ = ["send_batch", "send_gso", "BACKEND", "load"]


def _py_send_batch(
    sock: socket.socket, batch: FrameBatch, first: int, n: int, port: int, host: str
) -> int:
    _check(batch, first, n)
    mv = memoryview(batch.buf)
    sent = 0
    for i in range(first, first + n):
        off = batch.header_offset(i)
        try:
            sock.sendto(mv[off : off + batch.payload_len[i]], socket.MSG_DONTWAIT, (host, port))
        except OSError as exc:
            return sent if sent else -(exc.errno or errno.EIO)
        sent += 1
    return sent


def _check(batch: FrameBatch, first: int, n: int) -> None:
    if first < 0 or n < 0 or first + n > batch.capacity:
        raise ValueError(f"slots {first}..{first + n - 1} outside the batch")


class _CffiIO:
    name = "cffi"

    def __init__(self, mod: Any) -> None:
        self._ffi = mod.ffi
        self._lib = mod.lib
        self._addrs: dict[tuple[int, str, int], Any] = {}

    def _addr(self, family: int, host: str, port: int) -> Any:
        key = (family, host, port)
        a = self._addrs.get(key)
        if a is None:
            p = struct.pack("!H", port)
            if family == socket.AF_INET6:
                ip = socket.inet_pton(socket.AF_INET6, host.split("%")[0])
                raw = struct.pack("=H", family) + p + bytes(4) + ip + bytes(4)
            else:
                raw = struct.pack("=H", family) + p + socket.inet_aton(host) + bytes(8)
            if len(self._addrs) > 4096:
                self._addrs.clear()
            a = self._ffi.new("uint8_t[]", raw)
            self._addrs[key] = a
        return a

    def _views(self, batch: FrameBatch) -> tuple[Any, Any]:
        v = batch.views.get("cffio")
        if v is None:
            fb = self._ffi.from_buffer
            v = (fb("uint8_t[]", batch.buf), fb("uint32_t[]", batch.payload_len))
            batch.views["cffio"] = v
        return v

    def send_batch(
        self, sock: socket.socket, batch: FrameBatch, first: int, n: int, port: int, host: str
    ) -> int:
        _check(batch, first, n)
        buf, plen = self._views(batch)
        addr = self._addr(sock.family, host, port)
        return int(
            self._lib.vx_send_batch(
                sock.fileno(), buf, batch.slot, batch.headroom, first, n, plen, addr, len(addr)
            )
        )

    def send_gso(
        self, sock: socket.socket, batch: FrameBatch, first: int, n: int, port: int, host: str
    ) -> int:
        _check(batch, first, n)
        buf, plen = self._views(batch)
        addr = self._addr(sock.family, host, port)
        return int(
            self._lib.vx_send_gso(
                sock.fileno(), buf, batch.slot, batch.headroom, first, n, plen, addr, len(addr)
            )
        )


class _PyIO:
    name = "python"
    send_batch = staticmethod(_py_send_batch)
    send_gso = staticmethod(_py_send_batch)


def load(name: str | None = None) -> _CffiIO | _PyIO:
    """The backend matching :func:`vxlanpy.fastpath.load` for the same ``name``."""
    chosen = fastpath.load(name)
    if chosen.name == "python":
        return _PyIO()
    from . import _fastpath_c  # type: ignore[attr-defined]

    return _CffiIO(_fastpath_c)


backend = load()
BACKEND = backend.name
send_batch = backend.send_batch
send_gso = backend.send_gso
