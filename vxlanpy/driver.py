"""Driving the C datapath for the engine: hand it a batch, then turn what it did into the
engine's outputs and hand what it sent up to the engine's rules (engine.py). No decision is
made here: which frames C handles alone is what the engine installed (``Engine._rule``,
``Engine._entry``); everything else goes to ``handle_frames`` / ``handle_datagrams``."""

from __future__ import annotations

from collections.abc import Callable

from . import trace
from .abi import EntryFlag, Strict, Verdict
from .batch import FrameBatch
from .datapath import Datapath, Network, Rule, Target
from .headers import Outer
from .mirror import Mirror
from .packets import Datagram, DeviceFrame
from .peers import PeerCounters
from .segment import Segment
from .wire import VXLAN_HLEN, encode_header

__all__ = ["DatapathDriver"]


class DatapathDriver:
    """The fast-path half of ``Engine`` (a base class: the engine holds the state)."""

    datapath: Datapath | None
    _segments: dict[int, Segment]
    _to_send: list[Datagram]
    _to_device: list[DeviceFrame]
    peers: PeerCounters
    tracer: trace.Tracer | None

    _mirror: Mirror | None
    srcport: tuple[int, int]
    complete_checksums: bool
    outer: Outer
    # the engine's (engine.py): what C may do (rule, entry, targets), how headers are parsed,
    # and its rules for what C sent up
    _rule: Callable[..., tuple[Rule, list[Network]]]
    _entry: Callable[..., tuple[tuple[Target, ...], int] | None]
    _targets: Callable[..., tuple[Target, ...]]
    strict_mode: Callable[[], Strict]
    handle_frames: Callable[..., None]
    handle_datagrams: Callable[..., None]

    def attach_datapath(self, dp: Datapath) -> None:
        """Install every segment into ``dp``, now and from now on (see the module docstring)."""
        self.datapath = dp
        self._mirror = Mirror(dp, self._rule, self._entry, self._targets)
        for seg in self._segments.values():
            self._mirror.watch(seg)
        self.sync_datapath()

    def on_datapath_change(self, callback: Callable[[], None] | None) -> None:
        """Have ``callback`` told whenever something waits to be installed (for a driver whose
        datapath runs on its own, between calls: then it calls ``sync_datapath`` soon)."""
        if self._mirror is not None:
            self._mirror.on_change = callback

    def sync_datapath(self) -> None:
        """Install what changed since the last call (FDB entries, segment settings, engine
        settings) into the C datapath (mirror.py). Call it before each C call."""
        if self._mirror is not None:
            settings = (self.srcport, self.strict_mode(), self.complete_checksums, self.outer)
            self._mirror.sync(self._segments, settings)

    def refresh_from_datapath(self, vni: int) -> None:
        """Copy the last-seen times C recorded into the FDB of ``vni`` (before showing ages)."""
        if self.datapath is None:
            return
        fdb = self._segments[vni].fdb
        for mac, e in self.datapath.dump(vni).items():
            if e.flags & EntryFlag.REFRESH:
                fdb.touch(mac, round(e.seen * 1000))

    def forward_frames(self, vni: int, batch: FrameBatch, now: float) -> None:
        """``handle_frames`` through the C datapath: what is installed is done in C, the rest
        here. The same outputs as ``handle_frames`` (without a datapath, it is that)."""
        dp = self.datapath
        if dp is None:
            self.handle_frames(vni, batch, now)
            return
        self.sync_datapath()
        dp.tx_classify(vni, batch)
        if self.tracer is not None:
            trace.fast_tx(self, vni, batch, batch.count)
        self.datagrams_of_hits(vni, batch)
        up = [i for i in range(batch.count) if batch.action[i] < 0]
        if up:
            self.handle_frames(vni, batch, now, slots=up)

    def datagrams_of_hits(self, vni: int, batch: FrameBatch) -> None:
        """The datagrams C would send for the slots it classified as hits (``tx_classify``
        encapsulated them for their action's first target), for callers doing their own I/O;
        counted here as C counts what it sends."""
        dp = self.datapath
        assert dp is not None
        c = self._segments[vni].counters
        mv = memoryview(batch.buf)
        for i in range(batch.count):
            a = batch.action[i]
            if a <= 0:
                continue
            off, plen = batch.header_offset(i), batch.payload_len[i]
            payload = mv[off : off + plen]
            targets = dp.targets(a)
            if batch.buf[batch.frame_offset(i)] & 1:
                c.floods += 1
            for t in targets:
                data = payload if t.vni == targets[0].vni else encode_header(t.vni) + payload[8:]
                self._to_send.append(Datagram(data, t.ip, t.port, batch.sport[i], t.vni, i))
                c.tx_packets += 1
                c.tx_bytes += plen - VXLAN_HLEN
                self.peers.add(t.ip, 0, 1, plen - VXLAN_HLEN)

    def forward_datagrams(self, batch: FrameBatch, now: float) -> None:
        """``handle_datagrams`` through the C datapath, sources taken from ``batch.addrs``."""
        dp = self.datapath
        if dp is None:
            raise RuntimeError("no datapath attached")
        self.sync_datapath()
        dp.rx_classify(batch, now)
        if self.tracer is not None:
            trace.fast_rx(self, batch, range(batch.count))
        mv = memoryview(batch.buf)
        for i in range(batch.count):
            if batch.action[i] >= 0:
                off = batch.frame_offset(i)
                frame = mv[off : off + batch.frame_len[i]]
                self._to_device.append(DeviceFrame(batch.vni[i], frame, i))
        self.handle_upcalls(batch, now)

    def handle_upcalls(self, batch: FrameBatch, now: float) -> None:
        """The datagrams of ``batch`` C sent up (already decapsulated by it)."""
        dp = self.datapath
        assert dp is not None
        # batch.order: the slots in wire order (the receive pump puts split GRO datagrams in
        # spare slots); rx_classify leaves it 0..count-1
        slots = [i for i in batch.order[: batch.count] if batch.action[i] == Verdict.UPCALL]
        if slots:
            sources = [""] * batch.capacity
            for i in slots:
                sources[i] = dp.source(batch, i)
            self.handle_datagrams(batch, sources, now, slots=slots, prepared=True)
