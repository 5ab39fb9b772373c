"""The C datapath (``_fastdp.c``): a forwarding cache that mirrors the FDBs, and batched pumps.

Open vSwitch's fast path / slow path split. The engine (``engine.py``) stays the source of
truth: it pushes every FDB change into the cache (``Engine.attach_fastpath``), and the C side
forwards what the cache can decide alone, marking everything else in ``batch.action`` as an
upcall for the engine:

- ``tx_classify(vni, batch)`` / ``rx_classify(batch, now)``: no I/O, for tests and callers with
  their own sockets; ``tx_pump`` / ``rx_pump``: read, classify, send/write in one C call.
- ``batch.action[i]``: ``>= 0`` handled here, ``UPCALL`` for the engine, ``DROP`` dropped and
  counted here (a datagram larger than its slot).

Only the cffi backend has a datapath; with the pure-Python backend (``VXLANPY_PURE_PYTHON``)
:func:`available` is False and the engine forwards every frame itself, with the same results.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from typing import Any, NamedTuple

from . import kernels
from .batch import FrameBatch
from .fastio import ADDR_LEN, raw_sockaddr, source_name

__all__ = [
    "FastPath",
    "CacheEntry",
    "available",
    "UPCALL",
    "DROP",
    "REMOTE_NONE",
    "F_STATIC",
    "F_LEARNED",
    "COUNTERS",
    "GRO_COUNTERS",
    "RxPump",
]

UPCALL = -1
DROP = -2
REMOTE_NONE = 0xFFFFFFFF  # cached, but only the engine can forward to it (several remotes...)
F_STATIC, F_LEARNED = 1, 2
SEG_LEARNING, SEG_VLAN, SEG_PROXY = 1, 2, 4
MAX_REMOTES = 65536
MAX_BATCH = 1024  # the largest FrameBatch the pumps take (VX_MAX_BATCH)
COUNTERS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "tap_write_errors", "gso_frames")
# UDP GRO receives holding several datagrams; of them coalesced into one TCP super-frame, split
# into their datagrams; receives dropped because the pump was handed another batch meanwhile
GRO_COUNTERS = ("receives", "coalesced", "split", "pending_dropped")
RX_DRAINED, RX_MORE, RX_PENDING = 0, 1, 2  # RxPump.more


class RxPump(NamedTuple):
    """What one ``rx_pump`` call did: ``n`` datagrams in the last batch (``-errno`` on error),
    ``upcalls`` among them, ``gone`` the VNI whose TAP is gone (-1), ``more``: RX_DRAINED,
    RX_MORE (the socket may hold more) or RX_PENDING (datagrams received but not yet handled
    wait in the batch: call again with it)."""

    n: int
    upcalls: int
    gone: int
    more: int


class CacheEntry(NamedTuple):
    """A cached (vni, mac): ``remote`` is (ip, port) or None for REMOTE_NONE; ``seen`` in s."""

    remote: tuple[str, int] | None
    static: bool
    seen: float


def available() -> bool:
    """True if the C datapath is built and selected (the cffi backend)."""
    return kernels.BACKEND == "cffi"


def sockaddr(ip: str, port: int) -> bytes:
    """The raw sockaddr_in / sockaddr_in6 for ``ip:port`` (as recvmmsg reports sources)."""
    v6 = ipaddress.ip_address(ip).version == 6
    return raw_sockaddr(socket.AF_INET6 if v6 else socket.AF_INET, ip, port)


class FastPath:
    """One C datapath for a VTEP. Not a public table: the engine keeps it in step."""

    def __init__(
        self, srcport: tuple[int, int], strict: bool = False, complete_checksums: bool = True
    ) -> None:
        if not available():
            raise RuntimeError("the C datapath needs the cffi backend")
        from . import _fastpath_c  # type: ignore[attr-defined]

        self._ffi = _fastpath_c.ffi
        self._lib = _fastpath_c.lib
        self._core = kernels._CffiBackend(_fastpath_c)
        self._dp = self._ffi.gc(
            self._lib.vx_dp_new(srcport[0], srcport[1], int(strict), int(complete_checksums)),
            self._lib.vx_dp_free,
        )
        if self._dp == self._ffi.NULL:
            raise MemoryError("cannot allocate the datapath")
        self._remote_ids: dict[tuple[str, int], int] = {}
        self._remotes: list[tuple[str, int]] = []
        self._segs: dict[int, tuple[int, int, int, int, bytes | None, int]] = {}
        self._names: dict[bytes, str] = {}
        self._u32 = self._ffi.new("uint32_t[2]")
        self._u64 = self._ffi.new("uint64_t[256]")
        self._i64 = self._ffi.new("int64_t[1]")

    # --- segments, remotes, sockets ------------------------------------------------------

    def set_segment(
        self,
        vni: int,
        *,
        learning: bool,
        allow_vlan: bool,
        proxy: bool,
        local_mac: bytes | None,
        tap_fd: int | None = None,
        vnet: int | None = None,
        mtu: int | None = None,
    ) -> None:
        """Serve ``vni`` (or update its settings); device fields left None keep their value."""
        old = self._segs.get(vni, (-1, 0, 0, 0, None, 0))
        fd = old[0] if tap_fd is None else tap_fd
        vn = old[1] if vnet is None else vnet
        mt = old[2] if mtu is None else mtu
        flags = (
            (SEG_LEARNING if learning else 0)
            | (SEG_VLAN if allow_vlan else 0)
            | (SEG_PROXY if proxy else 0)
        )
        mac = local_mac if local_mac and len(local_mac) == 6 else None
        state = (fd, vn, mt, flags, mac, 1)
        if state == old:
            return
        r = self._lib.vx_dp_seg_set(
            self._dp, vni, fd, vn, mt, mac if mac else self._ffi.NULL, flags
        )
        if r < 0:
            raise OverflowError("too many segments for the C datapath")
        self._segs[vni] = state

    def set_device(self, vni: int, tap_fd: int, vnet: int, mtu: int) -> None:
        """The TAP of ``vni`` (served already): where the pumps read and write its frames."""
        fd, vn, mt, flags, mac, _u = self._segs[vni]
        self.set_segment(
            vni,
            learning=bool(flags & SEG_LEARNING),
            allow_vlan=bool(flags & SEG_VLAN),
            proxy=bool(flags & SEG_PROXY),
            local_mac=mac,
            tap_fd=tap_fd,
            vnet=vnet,
            mtu=mtu,
        )

    def remove_segment(self, vni: int) -> None:
        self._lib.vx_dp_seg_del(self._dp, vni)
        self._segs.pop(vni, None)

    def remote_id(self, ip: str, port: int) -> int:
        """The id of the remote ``ip:port`` (REMOTE_NONE when the table is full)."""
        key = (ip, port)
        rid = self._remote_ids.get(key)
        if rid is None:
            if len(self._remotes) >= MAX_REMOTES:
                return REMOTE_NONE
            rid = len(self._remotes)
            raw = sockaddr(ip, port)
            self._lib.vx_dp_remote_set(self._dp, rid, raw, len(raw))
            self._remote_ids[key] = rid
            self._remotes.append(key)
        return rid

    def remote(self, rid: int) -> tuple[str, int]:
        """(ip, port) of the remote ``rid``."""
        return self._remotes[rid]

    def set_port_fd(self, port: int, fd: int) -> None:
        """The send socket bound to source ``port`` (-1: none, frames of that flow go up)."""
        self._lib.vx_dp_port_fd(self._dp, port, fd)

    # --- entries ------------------------------------------------------------------------

    def put(self, vni: int, mac: bytes, remote: int, static: bool, seen_ms: int) -> None:
        r = self._lib.vx_dp_put(
            self._dp, vni, mac, remote, F_STATIC if static else F_LEARNED, max(0, seen_ms)
        )
        if r == -errno.ENOMEM:
            raise MemoryError("forwarding cache: out of memory")

    def delete(self, vni: int, mac: bytes) -> bool:
        return bool(self._lib.vx_dp_del(self._dp, vni, mac))

    def clear(self, vni: int) -> None:
        """Forget every entry of ``vni`` (the segment stays served)."""
        for mac in self.dump(vni):
            self.delete(vni, mac)

    def get(self, vni: int, mac: bytes) -> CacheEntry | None:
        rem, fl, seen = self._ffi.new("uint32_t[1]"), self._ffi.new("uint32_t[1]"), self._u64
        if not self._lib.vx_dp_get(self._dp, vni, mac, rem, fl, seen):
            return None
        return self._entry(int(rem[0]), int(fl[0]), int(seen[0]))

    def seen_ms(self, vni: int, mac: bytes) -> int | None:
        """When the fast path last saw ``mac`` arrive (ms), or None if it is not cached."""
        rem, fl, seen = self._u32, self._u32 + 1, self._u64
        if not self._lib.vx_dp_get(self._dp, vni, mac, rem, fl, seen):
            return None
        return int(seen[0])

    def dump(self, vni: int) -> dict[bytes, CacheEntry]:
        """Every cached entry of ``vni``."""
        n = int(
            self._lib.vx_dp_dump(
                self._dp, vni, self._ffi.NULL, self._ffi.NULL, self._ffi.NULL, self._ffi.NULL, 0
            )
        )
        cap = n + 16
        macs = self._ffi.new(f"uint8_t[{6 * cap}]")
        rem = self._ffi.new(f"uint32_t[{cap}]")
        fl = self._ffi.new(f"uint32_t[{cap}]")
        seen = self._ffi.new(f"uint64_t[{cap}]")
        n = min(cap, int(self._lib.vx_dp_dump(self._dp, vni, macs, rem, fl, seen, cap)))
        raw = bytes(self._ffi.buffer(macs, 6 * n))
        return {
            raw[6 * k : 6 * k + 6]: self._entry(int(rem[k]), int(fl[k]), int(seen[k]))
            for k in range(n)
        }

    def _entry(self, rid: int, flags: int, seen_ms: int) -> CacheEntry:
        remote = None if rid == REMOTE_NONE else self._remotes[rid]
        return CacheEntry(remote, bool(flags & F_STATIC), seen_ms / 1000.0)

    # --- counters -----------------------------------------------------------------------

    def counters(self, vni: int) -> dict[str, int]:
        out = self._ffi.new(f"uint64_t[{len(COUNTERS)}]")
        if not self._lib.vx_dp_counters(self._dp, vni, out):
            return dict.fromkeys(COUNTERS, 0)
        return {name: int(out[k]) for k, name in enumerate(COUNTERS)}

    def global_counters(self) -> dict[str, Any]:
        """``truncated``, ``checksums_completed``, ``send_errors`` (errno name -> count) and
        ``gro`` (the receive pump's UDP GRO counters, :data:`GRO_COUNTERS`)."""
        t, c = self._ffi.new("uint64_t[1]"), self._ffi.new("uint64_t[1]")
        errs = self._ffi.new("uint64_t[256]")
        gro = self._ffi.new(f"uint64_t[{len(GRO_COUNTERS)}]")
        self._lib.vx_dp_global(self._dp, t, c, errs, gro)
        send = {errno.errorcode.get(e, str(e)): int(errs[e]) for e in range(256) if errs[e]}
        return {
            "truncated": int(t[0]),
            "checksums_completed": int(c[0]),
            "send_errors": send,
            "gro": {name: int(gro[k]) for k, name in enumerate(GRO_COUNTERS)},
        }

    # --- forwarding ---------------------------------------------------------------------

    def _batch(self, batch: FrameBatch) -> Any:
        v = batch.views.get("dp")
        if v is None:
            if batch.capacity > MAX_BATCH:
                raise ValueError(f"the C datapath takes batches of at most {MAX_BATCH} frames")
            fb = self._ffi.from_buffer
            keep = [
                *self._core.views(batch),  # buf, frame_len, payload_len, vni, status, sport
                fb("uint8_t[]", batch.gso_type),
                fb("uint16_t[]", batch.gso_size),
                fb("uint8_t[]", batch.vnet_flags),
                fb("int32_t[]", batch.action),
                fb("uint8_t[]", batch.addrs),
                fb("uint32_t[]", batch.order),
            ]
            s = self._ffi.new("vx_batch *")
            s.buf, s.frame_len, s.payload_len, s.vni, s.status, s.sport = keep[:6]
            s.gso_type, s.gso_size, s.vnet_flags, s.action, s.addrs, s.order = keep[6:]
            s.slot, s.headroom = batch.slot, batch.headroom
            s.capacity, s.max_frame = batch.capacity, batch.max_frame
            v = (s, keep)
            batch.views["dp"] = v
        return v[0]

    def tx_classify(self, vni: int, batch: FrameBatch) -> int:
        """Classify slots 0..count-1 read from the device of ``vni``; hits are encapsulated in
        place with ``action[i]`` = remote id. Returns the number of hits."""
        r = int(self._lib.vx_dp_tx_classify(self._dp, vni, self._batch(batch), 0, batch.count))
        if r < 0:
            raise KeyError(vni)
        return r

    def rx_classify(self, batch: FrameBatch, now: float) -> int:
        """Decapsulate and classify received payloads 0..count-1 (sources in ``batch.addrs``);
        returns the number delivered by the fast path (``action[i]`` = segment index)."""
        return int(
            self._lib.vx_dp_rx_classify(self._dp, self._batch(batch), 0, batch.count, _ms(now))
        )

    def start_sender(self, segments: FrameBatch) -> None:
        """Send super-frames from a C thread of their own (device -> wire as a pipeline: this
        thread reads and cuts, that one sends); its jobs take the geometry of ``segments``.
        Raises OSError if the thread cannot start."""
        r = int(
            self._lib.vx_dp_sender_start(
                self._dp, segments.slot, segments.headroom, segments.max_frame, segments.capacity
            )
        )
        if r < 0:
            raise OSError(-r, f"cannot start the sender thread: {os.strerror(-r)}")

    def sender_sent(self) -> int | None:
        """Super-frames the sender thread has sent; None if there is no sender thread."""
        n = int(self._lib.vx_dp_sender_sent(self._dp))
        return None if n < 0 else n

    def tx_pump(
        self, vni: int, batch: FrameBatch, segments: FrameBatch, rounds: int
    ) -> tuple[int, int]:
        """Read the TAP of ``vni`` and forward the hits, up to ``rounds`` batches while nothing
        needs the engine. Returns (frames in ``batch`` now, upcalls among them); frames < 0
        is ``-errno`` (the TAP is gone)."""
        n = int(
            self._lib.vx_dp_tx_pump(
                self._dp, vni, self._batch(batch), self._batch(segments), rounds, self._u32
            )
        )
        batch.count = max(n, 0)
        return n, int(self._u32[0])

    def rx_pump(
        self, fd: int, batch: FrameBatch, now: float, rounds: int, spill: int = 0
    ) -> RxPump:
        """Receive from the UDP socket ``fd`` (into slots ``0..capacity - spill - 1``) and
        deliver the hits to their TAPs, up to ``rounds`` receives while nothing needs the
        engine. A UDP GRO receive (the socket has ``UDP_GRO`` on) is coalesced into one TCP
        super-frame where it can be, else split into its datagrams, which take the last
        ``spill`` slots. The datagrams of the last batch are ``batch.order[:n]``, in wire
        order; ``batch.count`` is set to ``n``."""
        n = int(
            self._lib.vx_dp_rx_pump(
                self._dp, fd, self._batch(batch), _ms(now), rounds, spill, self._u32, self._i64
            )
        )
        batch.count = max(n, 0)
        return RxPump(n, int(self._u32[0]), int(self._i64[0]), int(self._u32[1]))

    def spin(self, fds: list[int], usec: int) -> bool:
        """Busy-poll ``fds`` (at most 16) for up to ``usec`` µs without sleeping (the GIL is
        released); True as soon as one is readable."""
        r = int(self._lib.vx_dp_spin(fds, len(fds), usec))
        if r < 0:
            raise OSError(-r, os.strerror(-r))
        return r > 0

    def source(self, batch: FrameBatch, i: int) -> str:
        """The source IP of the datagram in slot ``i`` (from ``batch.addrs``)."""
        return source_name(batch.addrs, i, self._names)


def set_source(batch: FrameBatch, i: int, ip: str, port: int = 4789) -> None:
    """Record ``ip`` as the source of slot ``i`` (what recvmmsg does; for tests)."""
    raw = sockaddr(ip, port)
    batch.addrs[i * ADDR_LEN : i * ADDR_LEN + len(raw)] = raw


def _ms(now: float) -> int:
    return max(0, round(now * 1000))
