"""Choose the fast-path backend: the cffi extension (``"cffi"``) or its pure-Python twin.

``VXLANPY_PURE_PYTHON=1`` forces the twin; ``VXLANPY_REQUIRE_C=1`` turns a missing extension into
an ``ImportError`` (CI sets it, so a broken build cannot hide behind the twin). Both backends
expose the same six functions with the same signatures:

- ``encap_batch(batch, lo, hi)``: headers in place, ``payload_len`` and ``sport`` set;
- ``decap_batch(batch, strict)``: ``status``, ``vni`` and ``frame_len`` set per slot;
- ``complete_checksums(batch) -> int``: receive path, after ``decap_batch``: inner TCP/UDP
  checksums a checksum-offloading sender left partial (the field holds only the folded
  pseudo-header sum) are completed in place, so the frames can be written to a TAP; correct and
  otherwise wrong checksums are left alone. Returns how many frames were rewritten;
- ``tso_segment(batch, src, gso_size, out) -> int``: transmit path, for a frame a TAP with
  TSO offload handed over with a TCP GSO type: cuts the TCP super-frame in slot ``src`` into
  segments of at most ``gso_size`` payload bytes, appended to ``out`` from slot ``out.count``
  (``frame_len`` set, ``vni`` copied from ``batch.vni[src]``, ``count`` advanced), each with
  IPv4 total length / IPv6 payload length set, IPv4 id + k and header checksum, TCP seq + k *
  gso_size, FIN and PSH only on the last segment, CWR only on the first, and a full TCP checksum
  (the input's checksum field is ignored). Returns the number of segments; then encapsulate
  ``out``. Returns 0 and writes nothing when the frame is not untagged Ethernet + IPv4 (not a
  fragment) or IPv6 (next header TCP) + TCP with a payload, ``gso_size`` is 0, or the segments
  do not fit in ``out`` (slots or ``max_frame``): send such a frame as it is, or drop it;
- ``gro_coalesce(buf, length, seg) -> int``: receive path, for a socket with UDP_GRO:
  ``buf[:length]`` holds VXLAN datagrams of ``seg`` bytes each back to back (the last
  1..``seg``), the kernel's GRO layout. When there are at least two, all with the same VXLAN and
  inner Ethernet header, untagged IPv4 (not a fragment, valid header checksum, total length
  exactly the datagram's) or IPv6 (next header TCP, payload length exactly the datagram's) +
  TCP, IP and TCP headers equal but for lengths, IPv4 id, checksums, seq and flags, flags
  exactly ACK (ACK|PSH allowed on the last), valid TCP checksums (the result may be handed on
  as verified), payloads of one length (the last may be shorter, none empty) with consecutive
  sequence numbers, and a merged IP length of at most 65535: rewrites ``buf`` in place as one
  datagram, the first's headers followed by every payload in order, with the IP length, IPv4
  header checksum, TCP flags (the last segment's) and a full TCP checksum set, and returns its
  length. Otherwise returns 0 and leaves ``buf`` untouched;
- ``flow_hash(frame)``: the 32-bit inner-flow hash.

The batch kernels raise ``ValueError`` for a ``count`` outside ``0..capacity`` and ``encap_batch``
for a port range that is not ``0 <= lo <= hi <= 65535``; ``tso_segment`` for a ``src`` outside
``0..batch.count - 1`` or a ``gso_size`` outside ``0..65535``; ``gro_coalesce`` for a ``length``
past the end of ``buf`` or a ``seg`` outside ``0..2**32 - 1``.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

from . import _fastpath_py
from ._fastpath_py import check_batch, check_gro, check_port_range, check_tso
from .batch import FrameBatch

__all__ = [
    "BACKEND",
    "Backend",
    "backend",
    "load",
    "encap_batch",
    "decap_batch",
    "complete_checksums",
    "tso_segment",
    "gro_coalesce",
    "flow_hash",
]


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class _CffiBackend:
    """Adapts the raw cffi functions to the FrameBatch signatures. Views are made once per batch."""

    name = "cffi"

    def __init__(self, mod: Any) -> None:
        self._ffi = mod.ffi
        self._lib = mod.lib

    def views(self, batch: FrameBatch) -> tuple[Any, ...]:
        """cffi views of buf, frame_len, payload_len, vni, status, sport (made once per batch)."""
        v = batch.views.get("cffi")
        if v is None:
            fb = self._ffi.from_buffer
            v = (
                fb("uint8_t[]", batch.buf),
                fb("uint32_t[]", batch.frame_len),
                fb("uint32_t[]", batch.payload_len),
                fb("uint32_t[]", batch.vni),
                fb("int32_t[]", batch.status),
                fb("uint16_t[]", batch.sport),
            )
            batch.views["cffi"] = v
        return v

    def encap_batch(self, batch: FrameBatch, lo: int, hi: int) -> None:
        check_batch(batch)
        check_port_range(lo, hi)
        buf, flen, plen, vni, _st, sport = self.views(batch)
        self._lib.vx_encap_batch(
            buf, batch.slot, batch.headroom, batch.count, flen, vni, plen, sport, lo, hi
        )

    def decap_batch(self, batch: FrameBatch, strict: bool) -> None:
        check_batch(batch)
        buf, flen, plen, vni, st, _sport = self.views(batch)
        self._lib.vx_decap_batch(
            buf, batch.slot, batch.headroom, batch.count, plen, int(strict), vni, st, flen
        )

    def complete_checksums(self, batch: FrameBatch) -> int:
        check_batch(batch)
        buf, flen, _plen, _vni, _st, _sport = self.views(batch)
        return int(
            self._lib.vx_complete_checksums(buf, batch.slot, batch.headroom, batch.count, flen)
        )

    def tso_segment(self, batch: FrameBatch, src: int, gso_size: int, out: FrameBatch) -> int:
        check_tso(batch, src, gso_size, out)
        n = batch.frame_len[src]
        if n > batch.slot - batch.headroom:  # a corrupt length: unreadable
            return 0
        sbuf = self.views(batch)[0]
        obuf, oflen, _plen, ovni, _st, _sport = self.views(out)
        count = int(
            self._lib.vx_tso_segment(
                sbuf + batch.frame_offset(src),
                n,
                gso_size,
                batch.vni[src],
                obuf,
                out.slot,
                out.headroom,
                out.max_frame,
                out.count,
                out.capacity,
                oflen,
                ovni,
            )
        )
        out.count += count
        return count

    def gro_coalesce(self, buf: bytearray, length: int, seg: int) -> int:
        check_gro(buf, length, seg)
        return int(self._lib.vx_gro_coalesce(self._ffi.from_buffer("uint8_t[]", buf), length, seg))

    def flow_hash(self, frame: bytes | bytearray | memoryview) -> int:
        return int(self._lib.vx_flow_hash(self._ffi.from_buffer(frame), len(frame)))


class _PyBackend:
    name = "python"
    encap_batch = staticmethod(_fastpath_py.encap_batch)
    decap_batch = staticmethod(_fastpath_py.decap_batch)
    complete_checksums = staticmethod(_fastpath_py.complete_checksums)
    tso_segment = staticmethod(_fastpath_py.tso_segment)
    gro_coalesce = staticmethod(_fastpath_py.gro_coalesce)
    flow_hash = staticmethod(_fastpath_py.flow_hash)


Backend = _CffiBackend | _PyBackend


def load(name: str | None = None) -> Backend:
    """Return a backend: ``"cffi"``, ``"python"``, or ``None`` for the environment's choice."""
    if name == "python" or (name is None and _truthy("VXLANPY_PURE_PYTHON")):
        return _PyBackend()
    try:
        from . import _fastpath_c  # type: ignore[attr-defined]
    except ImportError as exc:
        if name == "cffi" or _truthy("VXLANPY_REQUIRE_C"):
            raise ImportError(
                "vxlanpy's C fast path is not built (pip install -e . builds it): " + str(exc)
            ) from exc
        return _PyBackend()
    mod: ModuleType = _fastpath_c
    return _CffiBackend(mod)


backend: Backend = load()
BACKEND: str = backend.name
encap_batch = backend.encap_batch
decap_batch = backend.decap_batch
complete_checksums = backend.complete_checksums
tso_segment = backend.tso_segment
gro_coalesce = backend.gro_coalesce
flow_hash = backend.flow_hash
