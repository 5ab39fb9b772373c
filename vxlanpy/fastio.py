"""Batched syscalls of the fast path: the C version (``_fastio.c``) or its Python twin.

The backend follows :mod:`vxlanpy.fastpath` (``VXLANPY_PURE_PYTHON`` / ``VXLANPY_REQUIRE_C``).
Both implement ``send_batch(sock, batch, first, n, dport, host) -> int``: write the UDP header
in front of each slot's payload (``batch.payload_len``/``batch.sport`` as ``encap_batch`` left
them) and send slots ``first .. first+n-1`` to ``host`` on the raw UDP socket ``sock``. Returns
how many the kernel took; ``-errno`` if it took none.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any

from . import fastpath
from .batch import FrameBatch

__all__ = ["send_batch", "BACKEND", "load"]

_UDP = struct.Struct("!HHHH")
_UDP_HLEN = 8
_VXLAN_HLEN = 8


def _py_send_batch(
    sock: socket.socket, batch: FrameBatch, first: int, n: int, dport: int, host: str
) -> int:
    mv = memoryview(batch.buf)
    sent = 0
    for i in range(first, first + n):
        off = batch.header_offset(i) - _UDP_HLEN
        length = batch.payload_len[i] + _UDP_HLEN
        _UDP.pack_into(batch.buf, off, batch.sport[i], dport, length, 0)
        try:
            sock.sendto(mv[off : off + length], socket.MSG_DONTWAIT, (host, 0))
        except OSError as exc:
            return sent if sent else -(exc.errno or errno.EIO)
        sent += 1
    return sent


class _CffiIO:
    name = "cffi"

    def __init__(self, mod: Any) -> None:
        self._ffi = mod.ffi
        self._lib = mod.lib
        self._addrs: dict[tuple[int, str], Any] = {}

    def _addr(self, family: int, host: str) -> tuple[Any, int]:
        key = (family, host)
        a = self._addrs.get(key)
        if a is None:
            if family == socket.AF_INET6:
                raw = struct.pack("=H", family) + bytes(2) + bytes(4)
                raw += socket.inet_pton(socket.AF_INET6, host.split("%")[0]) + bytes(4)
            else:
                raw = struct.pack("=H", family) + bytes(2) + socket.inet_aton(host) + bytes(8)
            if len(self._addrs) > 4096:
                self._addrs.clear()
            a = self._ffi.new("uint8_t[]", raw)
            self._addrs[key] = a
        return a, len(a)

    def send_batch(
        self, sock: socket.socket, batch: FrameBatch, first: int, n: int, dport: int, host: str
    ) -> int:
        if first < 0 or n < 0 or first + n > batch.capacity:
            raise ValueError("slots outside the batch")
        v = batch.views.get("cffio")
        if v is None:
            fb = self._ffi.from_buffer
            v = (
                fb("uint8_t[]", batch.buf),
                fb("uint32_t[]", batch.payload_len),
                fb("uint16_t[]", batch.sport),
            )
            batch.views["cffio"] = v
        addr, alen = self._addr(sock.family, host)
        return int(
            self._lib.vx_send_batch(
                sock.fileno(),
                v[0],
                batch.slot,
                batch.headroom,
                first,
                n,
                v[1],
                v[2],
                dport,
                addr,
                alen,
            )
        )


class _PyIO:
    name = "python"
    send_batch = staticmethod(_py_send_batch)


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
