"""Choose the batch kernels' backend: the C extension (``"cffi"``) or its pure-Python twin.

``VXLANPY_PURE_PYTHON=1`` forces the twin; ``VXLANPY_REQUIRE_C=1`` turns a missing extension into
an ``ImportError`` (CI sets it, so a broken build cannot hide behind the twin). Both backends
expose the same functions with the same signatures:

- ``encap_batch(batch, lo, hi)``: headers in place, ``payload_len`` and ``sport`` set;
- ``decap_batch(batch, strict)``: ``status``, ``vni`` and ``frame_len`` set per slot
  (``strict``: an ``abi.Strict``: reserved bits ignored, a drop, a drop but for VXLAN-GBP's);
- ``outer_fields(batch, outer)``: ``tos``, ``ttl``, ``df`` of each slot's outer header from its
  inner frame as ``headers.Outer`` says (the kernel's INET_ECN_encapsulate and ``inherit``s);
- ``ecn_decap(batch) -> int``: after ``decap_batch``, RFC 6040 on each decapsulated slot with
  its received outer TOS in ``tos``: outer CE marks an ECN-capable inner packet CE, outer ECT(1)
  turns inner ECT(0) into ECT(1), outer CE over a not-ECT packet sets status ``ECN`` (a drop);
  the inner IPv4 header checksum is updated incrementally. Returns packets rewritten;
- ``complete_checksums(batch) -> int``: receive path, after ``decap_batch``: inner TCP/UDP
  checksums a checksum-offloading sender left partial (the field holds only the folded
  pseudo-header sum) are completed in place, so the frames can be written to a TAP; correct and
  otherwise wrong checksums are left alone. Frames whose checksum verifies afterwards are marked
  ``abi.Offload.CSUM_OK`` (only those may be handed to a TAP as GSO frames); frames marked
  ``COALESCED`` are skipped. Returns how many frames were rewritten;
- ``tso_segment(batch, src, gso_size, out) -> int``: transmit path, for a frame a TAP with
  TSO offload handed over with a TCP GSO type: cuts the TCP super-frame in slot ``src`` into
  chunks of at most ``gso_size`` payload bytes, appended to ``out`` from slot ``out.count``
  (``frame_len`` set, ``vni`` copied from ``batch.vni[src]``, ``count`` advanced), each with
  IPv4 total length / IPv6 payload length set, IPv4 id + k and header checksum, TCP seq + k *
  gso_size, FIN and PSH only on the last chunk, CWR only on the first, and a full TCP checksum
  (the input's checksum field is ignored). Returns the number of chunks; then encapsulate
  ``out``. Returns 0 and writes nothing when the frame is not untagged Ethernet + IPv4 (not a
  fragment) or IPv6 (next header TCP) + TCP with a payload, ``gso_size`` is 0, or the chunks
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
- ``vnet_gso(buf, off, length, mtu, hoff) -> bool``: the virtio-net GSO header (at ``hoff``) a
  TAP needs to take the verified TCP frame ``buf[off:off+length]`` larger than ``mtu`` + 14 as
  a super-frame (the TCP checksum field set to the pseudo-header sum); False, nothing written,
  for any other frame;
- ``parse(frame) -> headers.L3L4``: where the network headers are (the one parse every kernel
  uses);
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

from . import _codec_py, _offload_py
from ._codec_py import check_batch, check_port_range
from ._offload_py import check_gro, check_tso
from .batch import FrameBatch
from .headers import L3L4, Outer
from .wire import flow_hash as _py_flow_hash

__all__ = [
    "BACKEND",
    "Backend",
    "backend",
    "load",
    "native",
    "cbatch",
    "encap_batch",
    "decap_batch",
    "outer_fields",
    "ecn_decap",
    "c_outer",
    "complete_checksums",
    "tso_segment",
    "gro_coalesce",
    "vnet_gso",
    "parse",
    "flow_hash",
]


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# the FrameBatch columns vx_batch points at, with their C element types
_COLUMNS = (
    ("buf", "uint8_t[]"),
    ("frame_len", "uint32_t[]"),
    ("payload_len", "uint32_t[]"),
    ("vni", "uint32_t[]"),
    ("status", "int32_t[]"),
    ("sport", "uint16_t[]"),
    ("gso_type", "uint8_t[]"),
    ("gso_size", "uint16_t[]"),
    ("offload", "uint8_t[]"),
    ("action", "int32_t[]"),
    ("addrs", "uint8_t[]"),
    ("order", "uint32_t[]"),
    ("tos", "uint8_t[]"),
    ("ttl", "uint8_t[]"),
    ("df", "uint8_t[]"),
)


def cbatch(mod: Any, batch: FrameBatch) -> Any:
    """The ``vx_batch *`` describing ``batch`` for the extension ``mod`` (made once per batch:
    cffi views of a buffer cost more than a kernel call)."""
    v = batch.views.get("vx_batch")
    if v is None:
        ffi = mod.ffi
        s = ffi.new("vx_batch *")
        keep = [ffi.from_buffer(ctype, getattr(batch, name)) for name, ctype in _COLUMNS]
        for (name, _ctype), view in zip(_COLUMNS, keep, strict=True):
            setattr(s, name, view)
        s.slot, s.headroom = batch.slot, batch.headroom
        s.capacity, s.max_frame = batch.capacity, batch.max_frame
        v = (s, keep)
        batch.views["vx_batch"] = v
    return v[0]


def c_outer(mod: Any, outer: Outer) -> Any:
    """The ``vx_outer *`` of ``outer`` (cached: a settings tuple has few values)."""
    c = _OUTERS.get(outer)
    if c is None:
        c = mod.ffi.new("vx_outer *")
        (c.tos, c.tos_inherit, c.ttl, c.ttl_inherit, c.df, c.df_inherit) = outer[:6]
        c.ecn_decap, c.zero_csum = int(outer.ecn_decap), int(outer.zero_csum)
        if len(_OUTERS) > 64:
            _OUTERS.clear()
        _OUTERS[outer] = c
    return c


_OUTERS: dict[Outer, Any] = {}


class Native:
    """Base of the adapters of the C extension: its module, ffi and lib."""

    def __init__(self, mod: Any) -> None:
        self.mod = mod
        self._ffi = mod.ffi
        self._lib = mod.lib


class _CffiBackend(Native):
    """Adapts the C kernels to the FrameBatch signatures."""

    name = "cffi"

    def encap_batch(self, batch: FrameBatch, lo: int, hi: int) -> None:
        check_batch(batch)
        check_port_range(lo, hi)
        self._lib.vx_encap(cbatch(self.mod, batch), 0, batch.count, lo, hi)

    def decap_batch(self, batch: FrameBatch, strict: int) -> None:
        check_batch(batch)
        self._lib.vx_decap(cbatch(self.mod, batch), 0, batch.count, int(strict))

    def complete_checksums(self, batch: FrameBatch) -> int:
        check_batch(batch)
        return int(self._lib.vx_complete_checksums(cbatch(self.mod, batch), 0, batch.count))

    def outer_fields(self, batch: FrameBatch, outer: Outer) -> None:
        check_batch(batch)
        self._lib.vx_outer_fields(cbatch(self.mod, batch), 0, batch.count, c_outer(self.mod, outer))

    def ecn_decap(self, batch: FrameBatch) -> int:
        check_batch(batch)
        return int(self._lib.vx_ecn_decap(cbatch(self.mod, batch), 0, batch.count))

    def tso_segment(self, batch: FrameBatch, src: int, gso_size: int, out: FrameBatch) -> int:
        check_tso(batch, src, gso_size, out)
        b, o = cbatch(self.mod, batch), cbatch(self.mod, out)
        count = int(self._lib.vx_tso_cut(b, src, gso_size, o, out.count))
        out.count += count
        return count

    def gro_coalesce(self, buf: bytearray, length: int, seg: int) -> int:
        check_gro(buf, length, seg)
        return int(self._lib.vx_gro_coalesce(self._ffi.from_buffer("uint8_t[]", buf), length, seg))

    def vnet_gso(self, buf: bytearray, off: int, length: int, mtu: int, hoff: int) -> bool:
        if not (0 <= off and off + length <= len(buf) and 0 <= hoff <= len(buf) - 10):
            raise ValueError("frame or header outside the buffer")
        p = self._ffi.from_buffer("uint8_t[]", buf)
        return bool(self._lib.vx_vnet_gso(p + off, length, mtu, p + hoff))

    def parse(self, frame: bytes | bytearray | memoryview) -> L3L4:
        h = self._ffi.new("vx_l3l4 *")
        self._lib.vx_parse(self._ffi.from_buffer(frame), len(frame), h)
        return L3L4(
            h.ethertype, h.l3, h.ip, h.proto, bool(h.fragment), bool(h.ok), h.l4, h.l4_len, h.tags
        )

    def flow_hash(self, frame: bytes | bytearray | memoryview) -> int:
        return int(self._lib.vx_flow_hash(self._ffi.from_buffer(frame), len(frame)))


class _PyBackend:
    name = "python"
    encap_batch = staticmethod(_codec_py.encap_batch)
    decap_batch = staticmethod(_codec_py.decap_batch)
    outer_fields = staticmethod(_codec_py.outer_fields)
    ecn_decap = staticmethod(_codec_py.ecn_decap)
    complete_checksums = staticmethod(_offload_py.complete_checksums)
    tso_segment = staticmethod(_offload_py.tso_segment)
    gro_coalesce = staticmethod(_offload_py.gro_coalesce)
    vnet_gso = staticmethod(_offload_py.vnet_gso)
    parse = staticmethod(_offload_py.parse)
    flow_hash = staticmethod(_py_flow_hash)


Backend = _CffiBackend | _PyBackend


def native(name: str | None = None) -> ModuleType | None:
    """The C extension module, or None for the pure-Python backend: ``"cffi"``, ``"python"``,
    or ``None`` for the environment's choice."""
    if name == "python" or (name is None and _truthy("VXLANPY_PURE_PYTHON")):
        return None
    try:
        from . import _native  # type: ignore[attr-defined]
    except ImportError as exc:
        if name == "cffi" or _truthy("VXLANPY_REQUIRE_C"):
            raise ImportError(
                "vxlanpy's C fast path is not built (pip install -e . builds it): " + str(exc)
            ) from exc
        return None
    mod: ModuleType = _native
    return mod


def load(name: str | None = None) -> Backend:
    """Return a backend: ``"cffi"``, ``"python"``, or ``None`` for the environment's choice."""
    mod = native(name)
    return _PyBackend() if mod is None else _CffiBackend(mod)


backend: Backend = load()
BACKEND: str = backend.name
encap_batch = backend.encap_batch
decap_batch = backend.decap_batch
outer_fields = backend.outer_fields
ecn_decap = backend.ecn_decap
complete_checksums = backend.complete_checksums
tso_segment = backend.tso_segment
gro_coalesce = backend.gro_coalesce
vnet_gso = backend.vnet_gso
parse = backend.parse
flow_hash = backend.flow_hash
