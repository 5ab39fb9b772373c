"""The sans-I/O VXLAN dataplane. Every forwarding decision of vxlanpy is made in this file.

No sockets, no event loop, no clock: the driver hands in what it read and the time, then drains
what the engine wants written. One call per batch, in the style of aioquic's connection:

- ``handle_frames(vni, batch, now)``: frames the segment's device produced. Then drain
  ``datagrams_to_send()`` (send each to ``host:port`` from ``sport``) and ``frames_to_device()``
  (ARP-proxy replies go back to the device).
- ``handle_datagrams(batch, sources, now)``: UDP payloads received, with each outer source IP.
  Then drain ``frames_to_device()``.
- ``get_timer()`` / ``handle_timer(now)``: FDB ageing.
- ``next_event()``: learned / moved / aged / L2 miss / L3 miss / dropped.

Fast path / slow path (``attach_fastpath``): the C datapath (``fastcache.py``) keeps a mirror of
every FDB and forwards what the mirror decides alone; the engine gets the rest as upcalls
(``handle_frames(..., slots=)``, ``handle_datagrams(..., slots=)``). The engine stays the source
of truth: call ``sync_fastpath()`` before each C call so that FDB changes (learning, moves,
ageing, admin changes) reach the mirror; ``forward_frames`` / ``forward_datagrams`` do the whole
round (C, then upcalls) without I/O. Forwarding results are the same with or without the mirror.

Outputs may be views into the batch the caller passed: drain them before reusing that batch.

Rules, device -> wire (``handle_frames``):
  1. frames shorter than an Ethernet header: drop (inner-too-short);
  2. 802.1Q/802.1ad tagged frames: drop unless the segment allows VLANs (RFC 7348 section 6.1);
  3. proxy on and an ARP request: answer from the neighbour table (nothing goes on the wire);
     unknown target: L3 miss event and drop (l3-miss), as the kernel does, no flood;
  4. broadcast/multicast destination: replicate to the flood list;
  5. unicast: FDB hit -> its remotes; miss -> L2 miss event, then the flood list;
  6. nothing to send to: drop (no-destination).
Rules, wire -> device (``handle_datagrams``):
  1. header invalid (too short, I flag clear, reserved bits in strict mode, inner frame too
     short): drop with that reason, not attributed to a VNI;
  2. VNI not configured: drop (unknown-vni);
  3. inner source MAC multicast or zero: drop (bad-source-mac); equal to the device's own MAC:
     drop (looped); tagged frame with VLANs not allowed: drop (vlan-tagged);
  4. learning on: learn source MAC -> outer source IP; a static MAC from another VTEP is a
     spoof: drop (spoofed-static); past max_addresses: deliver, count the refusal;
  5. deliver the inner frame to the segment's device.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import kernels
from .batch import FrameBatch
from .events import Dropped, Event, L2Miss, L3Miss, MacAged, MacLearned, MacMoved
from .fastcache import REMOTE_NONE, UPCALL, FastPath
from .fdb import Fdb, LearnResult, Remote
from .neigh import NeighTable, arp_reply
from .wire import (
    ARP_REQUEST,
    DEFAULT_SRCPORT_RANGE,
    ETH_HLEN,
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_ARP,
    STATUS_REASONS,
    VXLAN_HLEN,
    VXLAN_PORT,
    ZERO_MAC,
    DropReason,
    check_vni,
    encode_header,
    parse_arp,
)

__all__ = [
    "Engine",
    "SegmentConfig",
    "Segment",
    "Counters",
    "Datagram",
    "DeviceFrame",
]


class Datagram(NamedTuple):
    """A UDP datagram to send: ``payload`` (VXLAN header + frame) to ``host:port`` from
    source port ``sport``. ``slot`` is the batch slot it was made from (-1: a copy)."""

    payload: bytes | memoryview
    host: str
    port: int
    sport: int
    vni: int
    slot: int = -1


class DeviceFrame(NamedTuple):
    """An Ethernet frame to write to the device of segment ``vni`` (``slot``: as Datagram)."""

    vni: int
    frame: bytes | memoryview
    slot: int = -1


@dataclass(slots=True)
class Counters:
    """Per-segment counters (the engine-wide ones count drops not attributable to a VNI).

    tx counts datagrams sent (a flooded frame counts once per copy) and their inner bytes;
    rx counts frames delivered to the device.
    """

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    floods: int = 0
    l2_misses: int = 0
    l3_misses: int = 0
    arp_proxied: int = 0
    learned: int = 0
    moved: int = 0
    aged: int = 0
    learn_refused: int = 0
    drops: Counter[DropReason] = field(default_factory=Counter)

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in self.__slots__ if k != "drops"}
        out["dropped"] = self.dropped
        out["drops"] = {r.value: n for r, n in sorted(self.drops.items())}
        return out


@dataclass
class SegmentConfig:
    """One VXLAN segment (VNI) of the VTEP.

    ``remotes`` seed the flood list (head-end replication); ``group`` puts a multicast group
    there instead (or as well). ``local_mac`` is the device's own MAC, for loop detection.
    """

    vni: int
    remotes: Sequence[str] = ()
    group: str | None = None
    learning: bool = True
    ageing: float = 300.0
    max_addresses: int = 0
    proxy: bool = False
    allow_vlan: bool = False
    local_mac: bytes | None = None
    fdb: Sequence[tuple[bytes, Remote]] = ()
    neigh: Sequence[tuple[str, bytes]] = ()

    def __post_init__(self) -> None:
        check_vni(self.vni)
        if self.group is not None and not ipaddress.ip_address(self.group).is_multicast:
            raise ValueError(f"group {self.group} is not a multicast address")


class Segment:
    """Runtime state of one VNI: its FDB, neighbour table and counters."""

    __slots__ = ("vni", "config", "fdb", "neigh", "counters", "proxy", "allow_vlan", "local_mac")

    def __init__(self, config: SegmentConfig) -> None:
        self.vni = config.vni
        self.config = config
        self.fdb = Fdb(
            learning=config.learning, ageing=config.ageing, max_addresses=config.max_addresses
        )
        self.neigh = NeighTable()
        self.counters = Counters()
        self.proxy = config.proxy
        self.allow_vlan = config.allow_vlan
        self.local_mac = config.local_mac
        for ip in config.remotes:
            self.fdb.append(ZERO_MAC, Remote.make(ip))
        if config.group is not None:
            self.fdb.append(ZERO_MAC, Remote.make(config.group))
        for mac, remote in config.fdb:
            self.fdb.append(mac, remote)
        for ip, mac in config.neigh:
            self.neigh.replace(ip, mac)


_VLAN_TYPES = (ETH_P_8021Q, ETH_P_8021AD)
_FRESH = frozenset((LearnResult.NEW, LearnResult.REFRESHED, LearnResult.MOVED, LearnResult.STATIC))
_NONE3: tuple[bytes, str, int] = (b"", "", -1)


class Engine:
    """A VTEP's forwarding logic for any number of segments. See the module docstring."""

    def __init__(
        self,
        *,
        dstport: int = VXLAN_PORT,
        srcport: tuple[int, int] = DEFAULT_SRCPORT_RANGE,
        strict: bool = False,
        backend: str | None = None,
        max_events: int = 4096,
        complete_checksums: bool = True,
    ) -> None:
        if not 1 <= dstport <= 65535:
            raise ValueError(f"dstport must be in 1..65535, got {dstport}")
        lo, hi = srcport
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f"srcport range must be MIN:MAX within 1..65535, got {lo}:{hi}")
        self.dstport = dstport
        self.srcport = (lo, hi)
        self.strict = strict
        # Complete inner TCP/UDP checksums a kernel peer left in the CHECKSUM_PARTIAL state
        # (offload over veth): a TAP's stack would drop them. Wrong checksums stay wrong.
        self.complete_checksums = complete_checksums
        self.checksums_completed = 0
        self.fast = kernels.load(backend) if backend else kernels.backend
        self.counters = Counters()  # drops before a VNI is known
        self.events_lost = 0
        self._segments: dict[int, Segment] = {}
        self._events: deque[Event] = deque()
        self._max_events = max_events
        self._to_send: list[Datagram] = []
        self._to_device: list[DeviceFrame] = []
        self.fastpath: FastPath | None = None
        self._fp_flags: dict[int, tuple[bool, bool, bool, bytes | None]] = {}

    # --- configuration ------------------------------------------------------------------------

    def add_segment(self, config: SegmentConfig) -> Segment:
        """Serve ``config.vni``; ValueError if it is served already."""
        if config.vni in self._segments:
            raise ValueError(f"VNI {config.vni} is configured already")
        seg = Segment(config)
        self._segments[config.vni] = seg
        if self.fastpath is not None:
            self._mirror_segment(seg)
        return seg

    def remove_segment(self, vni: int) -> None:
        del self._segments[vni]
        if self.fastpath is not None:
            self.fastpath.remove_segment(vni)
            self._fp_flags.pop(vni, None)

    # --- the C fast path ----------------------------------------------------------------------

    def attach_fastpath(self, fp: FastPath) -> None:
        """Mirror every segment's FDB into ``fp`` from now on (see the module docstring)."""
        self.fastpath = fp
        for seg in self._segments.values():
            self._mirror_segment(seg)

    def _mirror_segment(self, seg: Segment) -> None:
        assert self.fastpath is not None
        self._fp_flags.pop(seg.vni, None)
        self._push_flags(seg)
        self.fastpath.clear(seg.vni)  # a new FDB object: nothing of the old one may stay
        fdb = seg.fdb
        fdb.dirty = set()
        for mac, _r in fdb.static_items():
            self._push_entry(seg, mac)
        for mac, _ip, _t in fdb.learned_items():
            self._push_entry(seg, mac)

    def _push_flags(self, seg: Segment) -> None:
        fp = self.fastpath
        assert fp is not None
        flags = (seg.fdb.learning, seg.allow_vlan, seg.proxy, seg.local_mac)
        if self._fp_flags.get(seg.vni) != flags:
            fp.set_segment(
                seg.vni,
                learning=flags[0],
                allow_vlan=flags[1],
                proxy=flags[2],
                local_mac=flags[3],
            )
            self._fp_flags[seg.vni] = flags

    def _push_entry(self, seg: Segment, mac: bytes) -> None:
        """Make the mirror's entry for ``mac`` what the FDB says now."""
        fp = self.fastpath
        assert fp is not None
        fdb = seg.fdb
        remotes = fdb.lookup(mac)
        if remotes is None:
            fp.delete(seg.vni, mac)
            return
        rid = REMOTE_NONE
        if len(remotes) == 1 and remotes[0].vni in (None, seg.vni):
            r = remotes[0]
            rid = fp.remote_id(r.ip, r.port or self.dstport)
        fp.put(seg.vni, mac, rid, fdb.is_static(mac), fdb.last_seen_ms(mac) or 0)

    def sync_fastpath(self) -> None:
        """Push FDB changes and segment settings to the C mirror. Call before each C call."""
        if self.fastpath is None:
            return
        for seg in self._segments.values():
            dirty = seg.fdb.dirty
            if dirty is None:  # the FDB object was replaced: mirror it afresh
                self._mirror_segment(seg)
                continue
            while dirty:  # one at a time: a failed push leaves the rest (and itself) to redo
                mac = dirty.pop()
                try:
                    self._push_entry(seg, mac)
                except BaseException:
                    dirty.add(mac)
                    raise
            self._push_flags(seg)

    def refresh_from_fastpath(self, vni: int) -> None:
        """Copy the last-seen times the C path recorded into the FDB of ``vni`` (before showing
        ages)."""
        if self.fastpath is None:
            return
        fdb = self._segments[vni].fdb
        for mac, e in self.fastpath.dump(vni).items():
            if not e.static:
                fdb.touch(mac, round(e.seen * 1000))

    def segment_stats(self, vni: int) -> dict[str, Any]:
        """The counters of ``vni``: the engine's plus the C fast path's (rx/tx packets and bytes;
        its TAP write errors and GSO frames are device counters, see ``FastPath.counters``)."""
        out = self._segments[vni].counters.to_dict()
        if self.fastpath is not None:
            for k, v in self.fastpath.counters(vni).items():
                if k in out:
                    out[k] += v
        return out

    def forward_frames(self, vni: int, batch: FrameBatch, now: float) -> None:
        """``handle_frames`` through the C mirror: hits are decided in C, the rest here. The
        same outputs as ``handle_frames`` (without a fast path, it is ``handle_frames``)."""
        fp = self.fastpath
        if fp is None:
            self.handle_frames(vni, batch, now)
            return
        self.sync_fastpath()
        fp.tx_classify(vni, batch)
        c = self._segments[vni].counters
        act = batch.action
        up: list[int] = []
        mv = memoryview(batch.buf)
        for i in range(batch.count):
            a = act[i]
            if a < 0:
                up.append(i)
                continue
            host, port = fp.remote(a)
            off, plen = batch.header_offset(i), batch.payload_len[i]
            self._to_send.append(Datagram(mv[off : off + plen], host, port, batch.sport[i], vni, i))
            c.tx_packets += 1
            c.tx_bytes += plen - VXLAN_HLEN
        if up:
            self.handle_frames(vni, batch, now, slots=up)

    def forward_datagrams(self, batch: FrameBatch, now: float) -> None:
        """``handle_datagrams`` through the C mirror, sources taken from ``batch.addrs``."""
        fp = self.fastpath
        if fp is None:
            raise RuntimeError("no fast path attached")
        self.sync_fastpath()
        fp.rx_classify(batch, now)
        self._deliver_hits(batch)
        self.handle_upcalls(batch, now)

    def _deliver_hits(self, batch: FrameBatch) -> None:
        mv = memoryview(batch.buf)
        for i in range(batch.count):
            if batch.action[i] >= 0:
                off = batch.frame_offset(i)
                self._to_device.append(
                    DeviceFrame(batch.vni[i], mv[off : off + batch.frame_len[i]], i)
                )

    def handle_upcalls(self, batch: FrameBatch, now: float) -> None:
        """The datagrams of ``batch`` the C path sent up (already decapsulated by it)."""
        fp = self.fastpath
        assert fp is not None
        # batch.order: the slots in wire order (the receive pump puts split GRO datagrams in
        # spare slots); rx_classify leaves it 0..count-1
        slots = [i for i in batch.order[: batch.count] if batch.action[i] == UPCALL]
        if slots:
            sources = [""] * batch.capacity
            for i in slots:
                sources[i] = fp.source(batch, i)
            self.handle_datagrams(batch, sources, now, slots=slots, prepared=True)

    def segment(self, vni: int) -> Segment:
        """The segment of ``vni``; KeyError if it is not configured."""
        return self._segments[vni]

    @property
    def segments(self) -> dict[int, Segment]:
        return dict(self._segments)

    # --- device -> wire -----------------------------------------------------------------------

    def handle_frames(
        self, vni: int, batch: FrameBatch, now: float, slots: Iterable[int] | None = None
    ) -> None:
        """Forward the frames in ``batch`` (read from the device of ``vni``); only those in
        ``slots`` if given (the C path's upcalls).

        Next: send ``datagrams_to_send()`` and write ``frames_to_device()``, then reuse the batch.
        """
        seg = self._segments[vni]
        c = seg.counters
        fdb = seg.fdb
        buf = batch.buf
        plan: list[tuple[int, tuple[Remote, ...]]] = []
        for i in range(batch.count) if slots is None else slots:
            n = batch.frame_len[i]
            off = batch.frame_offset(i)
            if n < ETH_HLEN:
                self._drop(DropReason.INNER_TOO_SHORT, seg, None)
                continue
            et = (buf[off + 12] << 8) | buf[off + 13]
            if et in _VLAN_TYPES and not seg.allow_vlan:
                self._drop(DropReason.VLAN_TAGGED, seg, None)
                continue
            if et == ETH_P_ARP and seg.proxy and self._proxy_arp(seg, batch, i):
                continue
            dst = bytes(buf[off : off + 6])
            if dst[0] & 1:
                remotes = fdb.flood_list()
                if remotes:
                    c.floods += 1
            else:
                hit = fdb.lookup(dst)
                if hit is None:
                    remotes = fdb.flood_list()
                    c.l2_misses += 1
                    self._event(L2Miss(vni, dst, bool(remotes)))
                    if remotes:
                        c.floods += 1
                else:
                    remotes = hit
            if not remotes:
                self._drop(DropReason.NO_DESTINATION, seg, None)
                continue
            batch.vni[i] = vni
            plan.append((i, remotes))
        if not plan:
            return
        lo, hi = self.srcport
        self.fast.encap_batch(batch, lo, hi)
        mv = memoryview(buf)
        out = self._to_send
        dstport = self.dstport
        for i, remotes in plan:
            hoff = batch.header_offset(i)
            plen = batch.payload_len[i]
            payload = mv[hoff : hoff + plen]
            sport = batch.sport[i]
            for r in remotes:
                if r.vni is not None and r.vni != vni:
                    data: bytes | memoryview = encode_header(r.vni) + payload[VXLAN_HLEN:]
                    out.append(Datagram(data, r.ip, r.port or dstport, sport, r.vni, i))
                else:
                    out.append(Datagram(payload, r.ip, r.port or dstport, sport, vni, i))
                c.tx_packets += 1
                c.tx_bytes += plen - VXLAN_HLEN

    def handle_frame(self, vni: int, frame: bytes | bytearray | memoryview, now: float) -> None:
        """One frame from the device (a copy is taken; outputs are bytes). See handle_frames."""
        batch = FrameBatch(1, max(len(frame), ETH_HLEN), VXLAN_HLEN)
        batch.append_frame(frame, vni)
        fast, self.fast = self.fast, _PY
        start_send, start_dev = len(self._to_send), len(self._to_device)
        try:
            self.handle_frames(vni, batch, now)
        finally:
            self.fast = fast
        self._detach(start_send, start_dev)

    def _proxy_arp(self, seg: Segment, batch: FrameBatch, i: int) -> bool:
        """Answer an ARP request locally; True if the frame was consumed (answered or dropped)."""
        off = batch.frame_offset(i)
        arp = parse_arp(memoryview(batch.buf)[off + ETH_HLEN : off + batch.frame_len[i]])
        if arp is None or arp.op != ARP_REQUEST:
            return False
        tpa = arp.tpa
        mac = None if tpa[0] == 127 or tpa[0] >= 224 else seg.neigh.lookup(tpa)
        if mac is None:
            seg.counters.l3_misses += 1
            self._event(L3Miss(seg.vni, str(ipaddress.IPv4Address(tpa))))
            self._drop(DropReason.L3_MISS, seg, None)
            return True
        self._to_device.append(DeviceFrame(seg.vni, arp_reply(arp, mac)))
        seg.counters.arp_proxied += 1
        return True

    # --- wire -> device -----------------------------------------------------------------------

    def handle_datagrams(
        self,
        batch: FrameBatch,
        sources: Sequence[str],
        now: float,
        slots: Iterable[int] | None = None,
        prepared: bool = False,
    ) -> None:
        """Process received UDP payloads (slot ``i`` came from the underlay IP ``sources[i]``);
        only those in ``slots`` if given; ``prepared``: already decapsulated (and checksums
        completed) by the C path.

        Next: write ``frames_to_device()`` to each segment's device, then reuse the batch.
        """
        if not prepared:
            self.fast.decap_batch(batch, self.strict)
            if self.complete_checksums:
                self.checksums_completed += self.fast.complete_checksums(batch)
        fresh: tuple[bytes, str, int] = _NONE3
        buf = batch.buf
        mv = memoryview(buf)
        out = self._to_device
        for i in range(batch.count) if slots is None else slots:
            src = sources[i]
            st = batch.status[i]
            if st:
                self._drop(STATUS_REASONS[st], None, src)
                continue
            vni = batch.vni[i]
            seg = self._segments.get(vni)
            if seg is None:
                self._drop(DropReason.UNKNOWN_VNI, None, src)
                continue
            off = batch.frame_offset(i)
            n = batch.frame_len[i]
            smac = bytes(buf[off + 6 : off + 12])
            if smac[0] & 1 or smac == ZERO_MAC:
                self._drop(DropReason.BAD_SOURCE_MAC, seg, src)
                continue
            if smac == seg.local_mac:
                self._drop(DropReason.LOOPED, seg, src)
                continue
            if not seg.allow_vlan and ((buf[off + 12] << 8) | buf[off + 13]) in _VLAN_TYPES:
                self._drop(DropReason.VLAN_TAGGED, seg, src)
                continue
            c = seg.counters
            # A run of frames of one flow (the common case) is learned once per batch: the
            # FDB already holds (smac -> src) at `now` after the first, so the rest would only
            # refresh it again with the same time.
            if seg.fdb.learning and (smac, src, vni) != fresh:
                res, old = seg.fdb.learn(smac, src, now)
                fresh = (smac, src, vni) if res in _FRESH else _NONE3
                if res is LearnResult.NEW:
                    c.learned += 1
                    self._event(MacLearned(vni, smac, src))
                elif res is LearnResult.MOVED:
                    c.moved += 1
                    self._event(MacMoved(vni, smac, old or "", src))
                elif res is LearnResult.SPOOFED:
                    self._drop(DropReason.SPOOFED_STATIC, seg, src)
                    continue
                elif res is LearnResult.REFUSED:
                    c.learn_refused += 1
            out.append(DeviceFrame(vni, mv[off : off + n], i))
            c.rx_packets += 1
            c.rx_bytes += n

    def handle_datagram(
        self, payload: bytes | bytearray | memoryview, source: str, now: float
    ) -> None:
        """One received UDP payload (a copy is taken; outputs are bytes)."""
        batch = FrameBatch(1, max(len(payload), ETH_HLEN), VXLAN_HLEN)
        batch.append_payload(payload)
        fast, self.fast = self.fast, _PY
        start_send, start_dev = len(self._to_send), len(self._to_device)
        try:
            self.handle_datagrams(batch, (source,), now)
        finally:
            self.fast = fast
        self._detach(start_send, start_dev)

    # --- outputs ------------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[Datagram]:
        """Datagrams produced since the last call (the list is handed over, not copied)."""
        out, self._to_send = self._to_send, []
        return out

    def frames_to_device(self) -> list[DeviceFrame]:
        """Frames for the devices produced since the last call."""
        out, self._to_device = self._to_device, []
        return out

    def next_event(self) -> Event | None:
        """The oldest pending event, or None."""
        return self._events.popleft() if self._events else None

    def events(self) -> Iterable[Event]:
        """Drain all pending events."""
        while self._events:
            yield self._events.popleft()

    # --- timers -------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When to call ``handle_timer`` next (same clock as ``now``), or None."""
        deadlines = [d for s in self._segments.values() if (d := s.fdb.next_deadline()) is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Age out learned entries; emits MacAged events."""
        fp = self.fastpath
        for seg in self._segments.values():
            seen = None
            if fp is not None:
                seen = functools.partial(fp.seen_ms, seg.vni)
            for mac, remote in seg.fdb.expire(now, seen):
                seg.counters.aged += 1
                self._event(MacAged(seg.vni, mac, remote.ip))

    # --- helpers ------------------------------------------------------------------------------

    def _event(self, ev: Event) -> None:
        if len(self._events) >= self._max_events:
            self.events_lost += 1
        else:
            self._events.append(ev)

    def _drop(self, reason: DropReason, seg: Segment | None, source: str | None) -> None:
        (seg.counters if seg else self.counters).drops[reason] += 1
        self._event(Dropped(reason, seg.vni if seg else None, source))

    def _detach(self, start_send: int, start_dev: int) -> None:
        """Turn outputs that view a throw-away batch into bytes."""
        for k in range(start_send, len(self._to_send)):
            d = self._to_send[k]
            self._to_send[k] = d._replace(payload=bytes(d.payload), slot=-1)
        for k in range(start_dev, len(self._to_device)):
            f = self._to_device[k]
            self._to_device[k] = f._replace(frame=bytes(f.frame), slot=-1)


# Single-frame helpers use the pure-Python twin: one C call per frame costs more than struct.
_PY = kernels.load("python")
