"""The C datapath's tables (csrc/table.c, tx.c, rx.c): what the engine installs for C to do.

Open vSwitch's split: the engine (engine.py) decides and installs; C matches and executes, and
sends up whatever matches nothing. What can be installed:

- per segment (``Rule``): which match fields send a frame up (``tx_up``, ``rx_up``: abi.TxMatch,
  abi.RxMatch), what to do with a received source MAC that has no entry (``rx_miss``), and the
  action for group destinations (``group_action``, a flood);
- per (VNI, MAC) an entry: an action (the remotes to encapsulate to, each with its port and
  VNI: :meth:`Datapath.action`) and abi.EntryFlag flags (encapsulate frames to the MAC; deliver
  frames from it if they came from one of the action's remotes, or from anywhere; refresh its
  last-seen time);
- the datapath's settings (source-port range, strict parsing, checksum completion).

Actions and remotes are interned and reference-counted here (ids are reused; at most
abi.MAX_ACTIONS and abi.MAX_REMOTES at once: past that, ``action`` returns 0 and the entry's
frames go up). ``tx_classify`` / ``rx_classify`` run the matching without I/O (tests, callers
with their own sockets); pumps.py does the I/O. Only the cffi backend has a datapath
(:func:`available`).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

from . import kernels
from .abi import (
    ACTION_REMOTES,
    ADDR_LEN,
    ALLOW_PREFIXES,
    DP_COUNTERS,
    MAX_ACTIONS,
    MAX_BATCH,
    MAX_PEERS,
    MAX_REMOTES,
    SEG_COUNTERS,
    EntryFlag,
)
from .batch import FrameBatch
from .headers import Outer
from .io.batchio import raw_sockaddr, source_name

__all__ = [
    "Datapath",
    "Rule",
    "Target",
    "Entry",
    "Network",
    "available",
    "set_source",
    "sockaddr",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Rule(NamedTuple):
    """A segment's rule (vx_rule)."""

    tx_up: int = 0
    rx_up: int = 0
    rx_miss: int = 0
    group_action: int = 0
    rx_from: int = 0


class Target(NamedTuple):
    """Where an action sends a copy: remote ``ip:port``, with ``vni`` in the header."""

    ip: str
    port: int
    vni: int


class Entry(NamedTuple):
    """An installed (vni, mac): the action's targets (() for none), flags, last seen (s)."""

    targets: tuple[Target, ...]
    flags: int
    seen: float

    @property
    def static(self) -> bool:
        return bool(self.flags & EntryFlag.STATIC)


# a vx_peer_counters row: family, address, 6 bytes of padding, four counters
_PEER_ROW = struct.Struct("=H16s6x4Q")
_ADDR_LEN = {socket.AF_INET: 4, socket.AF_INET6: 16}


def available() -> bool:
    """True if the C datapath is built and selected (the cffi backend)."""
    return kernels.BACKEND == "cffi"


def sockaddr(ip: str, port: int) -> bytes:
    """The raw sockaddr_in / sockaddr_in6 for ``ip:port`` (as recvmmsg reports sources)."""
    v6 = ipaddress.ip_address(ip).version == 6
    return raw_sockaddr(socket.AF_INET6 if v6 else socket.AF_INET, ip, port)


def set_source(batch: FrameBatch, i: int, ip: str, port: int = 4789) -> None:
    """Record ``ip`` as the source of slot ``i`` (what recvmmsg does; for tests)."""
    raw = sockaddr(ip, port)
    batch.addrs[i * ADDR_LEN : i * ADDR_LEN + len(raw)] = raw


def _ms(now: float) -> int:
    return max(0, round(now * 1000))


class _Interned:
    """Ids for values, with reference counts and reuse; id 0 is never given out."""

    def __init__(self, limit: int, first: int) -> None:
        self._ids: dict[Any, int] = {}
        self.values: list[Any] = [None] * first
        self._refs: list[int] = [0] * first
        self._free: list[int] = []
        self._limit = limit

    def get(self, value: Any) -> tuple[int, bool]:
        """(id, new) with one more reference, or (-1, False) when every id is taken."""
        i = self._ids.get(value)
        if i is not None:
            self._refs[i] += 1
            return i, False
        if self._free:
            i = self._free.pop()
            self.values[i] = value
            self._refs[i] = 1
        elif len(self.values) < self._limit:
            i = len(self.values)
            self.values.append(value)
            self._refs.append(1)
        else:
            return -1, False
        self._ids[value] = i
        return i, True

    def release(self, i: int) -> Any:
        """Drop a reference; the value if that was the last one (its id is free again)."""
        self._refs[i] -= 1
        if self._refs[i]:
            return None
        value = self.values[i]
        del self._ids[value]
        self.values[i] = None
        self._free.append(i)
        return value

    def id(self, value: Any) -> int:
        return self._ids[value]

    def __len__(self) -> int:
        return len(self._ids)


class Datapath:
    """One C datapath for a VTEP. Not a public table: the engine keeps it in step."""

    def __init__(self, chunk_max_frame: int = 9216 + 18) -> None:
        mod = kernels.native("cffi") if available() else None
        if mod is None:
            raise RuntimeError("the C datapath needs the cffi backend")
        self.mod = mod
        self._ffi = mod.ffi
        self._lib = mod.lib
        self.dp = self._ffi.gc(self._lib.vx_dp_new(chunk_max_frame), self._lib.vx_dp_free)
        if self.dp == self._ffi.NULL:
            raise MemoryError("cannot allocate the datapath")
        self._remotes = _Interned(MAX_REMOTES, 0)
        self._actions = _Interned(MAX_ACTIONS, 1)
        self._names: dict[bytes, str] = {}
        self._u32 = self._ffi.new("uint32_t[2]")
        self._u64 = self._ffi.new("uint64_t[1]")
        self._rule = self._ffi.new("vx_rule *")
        self._cfg = self._ffi.new("vx_config *")
        self._seg_c = self._ffi.new("vx_seg_counters *")
        self._dp_c = self._ffi.new("vx_dp_counters *")
        self._peers: Any = None

    # --- settings, segments, devices, sockets ----------------------------------------------

    def configure(
        self, srcport: tuple[int, int], strict: int, complete_checksums: bool, outer: Outer
    ) -> None:
        """``strict``: an ``abi.Strict``; ``outer``: the outer header's TOS/TTL/DF."""
        c = self._cfg
        c.srcport_lo, c.srcport_hi = srcport
        c.strict, c.complete_checksums = int(strict), int(complete_checksums)
        c.outer = kernels.c_outer(self.mod, outer)[0]
        self._lib.vx_dp_configure(self.dp, c)

    def set_segment(self, vni: int, rule: Rule) -> None:
        """Serve ``vni`` with ``rule`` (or replace its rule)."""
        r = self._rule
        r.tx_up, r.rx_up, r.rx_miss, r.group_action, r.rx_from = rule
        if self._lib.vx_dp_segment(self.dp, vni, r) < 0:
            raise OverflowError("too many segments for the C datapath")

    def set_allow(self, vni: int, networks: Sequence[Network]) -> bool:
        """The sources ``vni``'s rule admits with ``From.ALLOWED``; False (nothing installed) if
        there are more than abi.ALLOW_PREFIXES."""
        if len(networks) > ALLOW_PREFIXES:
            return False
        arr = self._ffi.new(f"vx_prefix[{max(1, len(networks))}]")
        for k, n in enumerate(networks):
            arr[k].family = socket.AF_INET6 if n.version == 6 else socket.AF_INET
            arr[k].len = n.prefixlen
            packed = n.network_address.packed
            arr[k].addr[0 : len(packed)] = packed
        if self._lib.vx_dp_allow(self.dp, vni, len(networks), arr) < 0:
            raise KeyError(vni)
        return True

    def set_device(self, vni: int, tap_fd: int, vnet: int, mtu: int) -> None:
        """The TAP of ``vni`` (served already): where the pumps read and write its frames."""
        if self._lib.vx_dp_device(self.dp, vni, tap_fd, vnet, mtu) < 0:
            raise KeyError(vni)

    def remove_segment(self, vni: int) -> None:
        """Stop serving ``vni``; its entries go, and the actions they held."""
        self.clear(vni)
        self._lib.vx_dp_segment_del(self.dp, vni)

    def set_port_fd(self, port: int, df: bool, fd: int) -> None:
        """The send socket bound to source ``port`` for datagrams with DF set (``df``) or not
        (-1: none, frames of that flow go up)."""
        self._lib.vx_dp_port_fd(self.dp, port, int(df), fd)

    def set_link(self, fd: int, ttl: int) -> None:
        """Tunnel GSO (io/tgso.py): TCP super-frames to remotes with a link are written whole
        to the TAP ``fd`` (-1: off), outer TTL ``ttl`` where the settings leave it open."""
        self._lib.vx_dp_link(self.dp, fd, ttl)

    def set_remote_link(self, rid: int, link: tuple[bytes, bytes, bytes] | None) -> None:
        """The next hop's MAC, the underlay device's MAC and the source IPv4 address of remote
        ``rid`` (None: no link, its super-frames are cut)."""
        null = self._ffi.NULL
        dst, src, saddr = link if link is not None else (null, null, null)
        self._lib.vx_dp_remote_link(self.dp, rid, dst, src, saddr)

    def remotes(self) -> list[tuple[int, str, int]]:
        """(id, ip, port) of every remote installed."""
        return [(i, v[0], v[1]) for i, v in enumerate(self._remotes.values) if v is not None]

    # --- actions ---------------------------------------------------------------------------

    def action(self, targets: tuple[Target, ...]) -> int:
        """An action id that sends a copy to each target, with one reference for the caller
        (give it to ``put`` or ``release`` it); 0 if it cannot be installed (no target, more
        than abi.ACTION_REMOTES, or no id left)."""
        if not targets or len(targets) > ACTION_REMOTES:
            return 0
        aid, new = self._actions.get(targets)
        if aid < 0:
            return 0
        if new:
            rids: list[int] = []
            for t in targets:
                rid, fresh = self._remotes.get((t.ip, t.port))
                if rid < 0:
                    for r in rids:
                        self._remotes.release(r)
                    self._actions.release(aid)
                    return 0
                if fresh:
                    raw = sockaddr(t.ip, t.port)
                    self._lib.vx_dp_remote(self.dp, rid, raw, len(raw))
                rids.append(rid)
            vnis = [t.vni for t in targets]
            if self._lib.vx_dp_action(self.dp, aid, len(targets), rids, vnis) < 0:
                raise ValueError(f"cannot install action {targets}")
        return aid

    def release(self, aid: int) -> None:
        """Drop a reference to the action ``aid`` (0: nothing)."""
        if aid:
            targets = self._actions.release(aid)
            if targets is not None:
                for t in targets:
                    self._remotes.release(self._remotes.id((t.ip, t.port)))

    def targets(self, aid: int) -> tuple[Target, ...]:
        """What the action ``aid`` sends to."""
        t: tuple[Target, ...] = self._actions.values[aid] if aid else ()
        return t

    @property
    def action_count(self) -> int:
        return len(self._actions)

    @property
    def remote_count(self) -> int:
        return len(self._remotes)

    # --- entries ---------------------------------------------------------------------------

    def put(self, vni: int, mac: bytes, aid: int, flags: int, seen_ms: int) -> None:
        """Install (vni, mac) with the action ``aid`` (its reference passes to the entry),
        ``flags`` (abi.EntryFlag) and a last-seen time (ms). KeyError: vni not served."""
        r = self._lib.vx_dp_put(self.dp, vni, mac, aid, flags, max(0, seen_ms), self._u32)
        if r < 0:
            self.release(aid)
            if r == -errno.ENOMEM:
                raise MemoryError("datapath flow table: out of memory")
            raise KeyError(vni)
        self.release(int(self._u32[0]))

    def delete(self, vni: int, mac: bytes) -> bool:
        found = bool(self._lib.vx_dp_del(self.dp, vni, mac, self._u32))
        if found:
            self.release(int(self._u32[0]))
        return found

    def clear(self, vni: int) -> None:
        """Forget every entry of ``vni`` (the segment stays served)."""
        for mac in self.dump(vni):
            self.delete(vni, mac)

    def get(self, vni: int, mac: bytes) -> Entry | None:
        a, fl = self._u32, self._u32 + 1
        if not self._lib.vx_dp_get(self.dp, vni, mac, a, fl, self._u64):
            return None
        return Entry(self.targets(int(a[0])), int(fl[0]), int(self._u64[0]) / 1000.0)

    def seen_ms(self, vni: int, mac: bytes) -> int | None:
        """When C last refreshed ``mac`` (ms), or None if it is not installed."""
        a, fl = self._u32, self._u32 + 1
        if not self._lib.vx_dp_get(self.dp, vni, mac, a, fl, self._u64):
            return None
        return int(self._u64[0])

    def dump(self, vni: int) -> dict[bytes, Entry]:
        """Every installed entry of ``vni``."""
        null = self._ffi.NULL
        n = int(self._lib.vx_dp_dump(self.dp, vni, null, null, null, null, 0))
        cap = n + 16
        macs = self._ffi.new(f"uint8_t[{6 * cap}]")
        act = self._ffi.new(f"uint32_t[{cap}]")
        fl = self._ffi.new(f"uint32_t[{cap}]")
        seen = self._ffi.new(f"uint64_t[{cap}]")
        n = min(cap, int(self._lib.vx_dp_dump(self.dp, vni, macs, act, fl, seen, cap)))
        raw = bytes(self._ffi.buffer(macs, 6 * n))
        return {
            raw[6 * k : 6 * k + 6]: Entry(self.targets(int(act[k])), int(fl[k]), seen[k] / 1000)
            for k in range(n)
        }

    # --- counters --------------------------------------------------------------------------

    def segment_counters(self, vni: int) -> dict[str, int]:
        """What C did itself for ``vni`` (abi.SEG_COUNTERS; zeros if not served)."""
        c = self._seg_c
        self._lib.vx_dp_read_seg_counters(self.dp, vni, c)
        return {name: int(getattr(c, name)) for name in SEG_COUNTERS}

    def counters(self) -> dict[str, Any]:
        """Datapath-wide counters (abi.DP_COUNTERS); ``send_errors`` by errno name."""
        c = self._dp_c
        self._lib.vx_dp_read_counters(self.dp, c)
        out: dict[str, Any] = {}
        for n in DP_COUNTERS:
            v = getattr(c, n)
            out[n] = int(v) if isinstance(v, int) else [int(x) for x in v]
        errs = out.pop("send_errors")
        out["send_errors"] = {
            errno.errorcode.get(e, str(e)): int(errs[e]) for e in range(len(errs)) if errs[e]
        }
        return out

    def peers(self) -> dict[str, tuple[int, int, int, int]]:
        """What C sent to and delivered from each remote VTEP: (tx_packets, tx_bytes,
        rx_packets, rx_bytes) by IP; ``""`` is the row of the peers past abi.MAX_PEERS."""
        ffi = self._ffi
        if self._peers is None:
            self._peers = ffi.new(f"vx_peer_counters[{MAX_PEERS + 1}]")
            assert ffi.sizeof("vx_peer_counters") == _PEER_ROW.size
        n = min(MAX_PEERS + 1, int(self._lib.vx_dp_read_peers(self.dp, self._peers, MAX_PEERS + 1)))
        out = {}
        raw = ffi.buffer(self._peers, n * _PEER_ROW.size)
        for k, (family, addr, *counts) in enumerate(_PEER_ROW.iter_unpack(raw)):
            if k == 0:
                out[""] = tuple(counts)
            elif family in _ADDR_LEN:
                out[socket.inet_ntop(family, addr[: _ADDR_LEN[family]])] = tuple(counts)
        return out

    # --- matching without I/O --------------------------------------------------------------

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """The datapath thread (pumps.py, csrc/loop.c) parked for the block, a no-op without
        one. Every call into the datapath from another thread parks it anyway; a block of many
        calls (installing a segment's entries) is spared a park per call."""
        self._lib.vx_loop_pause(self.dp)
        try:
            yield
        finally:
            self._lib.vx_loop_resume(self.dp)

    def cbatch(self, batch: FrameBatch) -> Any:
        if batch.capacity > MAX_BATCH:
            raise ValueError(f"the C datapath takes batches of at most {MAX_BATCH} frames")
        return kernels.cbatch(self.mod, batch)

    def tx_classify(self, vni: int, batch: FrameBatch) -> int:
        """Classify slots 0..count-1 read from the device of ``vni``; hits are encapsulated in
        place with ``action[i]`` = the action id. Returns the number of hits."""
        r = int(self._lib.vx_tx_classify(self.dp, vni, self.cbatch(batch), 0, batch.count))
        if r < 0:
            raise KeyError(vni)
        return r

    def rx_classify(self, batch: FrameBatch, now: float) -> int:
        """Decapsulate and classify received payloads 0..count-1 (sources in ``batch.addrs``);
        returns the number C delivers (``action[i]`` = segment index)."""
        return int(self._lib.vx_rx_classify(self.dp, self.cbatch(batch), 0, batch.count, _ms(now)))

    def source(self, batch: FrameBatch, i: int) -> str:
        """The source IP of the datagram in slot ``i`` (from ``batch.addrs``)."""
        return source_name(batch.addrs, i, self._names)
