"""The sans-I/O VXLAN dataplane. Every forwarding decision of vxlanpy is made in this file.

No sockets, no event loop, no clock: the driver hands in what it read and the time, then drains
what the engine wants written. One call per batch, in the style of aioquic's connection:

- ``handle_frames(vni, batch, now)``: frames the segment's device produced. Then drain
  ``datagrams_to_send()`` (send each to ``host:port`` from ``sport``) and ``frames_to_device()``
  (ARP and ND proxy replies go back to the device).
- ``handle_datagrams(batch, sources, now)``: UDP payloads received, with each outer source IP.
  Then drain ``frames_to_device()``.
- ``get_timer()`` / ``handle_timer(now)``: FDB ageing.
- ``next_event()``: learned / moved / aged / L2 miss / L3 miss / dropped.
- ``tracer``: None, or a trace.Tracer that is told each packet's decision (checked once per
  batch; on, the rules run one slot at a time).

Fast path / slow path (``attach_datapath``), as in Open vSwitch: **the C datapath executes
what this engine decided and installed; it holds no policy of its own.** For each segment the
engine installs a rule (which match fields send a frame up, what to do with an unknown source,
the flood action) and, for each MAC its FDB knows, an entry: the action (the remotes to
encapsulate to, with their port and VNI) and what C may do with it (encapsulate frames to the
MAC; deliver frames from it if they came from one of its remotes, or from anywhere; refresh it).
C matches and executes; whatever matches nothing comes back here as an upcall
(``handle_frames(..., slots=)``, ``handle_upcalls``). ``sync_datapath()`` (before each C call)
installs what changed: the FDB's change log, segment settings, engine settings. A new rule here
needs no C change unless it needs a new match field or action. Forwarding results are the
same with or without the datapath (tests/test_datapath.py holds the two to it).

Outputs may be views into the batch the caller passed: drain them before reusing that batch.

Rules, device -> wire (``handle_frames``):
  1. frames shorter than an Ethernet header: drop (inner-too-short);
  2. 802.1Q/802.1ad tagged frames: drop unless the segment allows VLANs (RFC 7348 section 6.1);
  3. proxy on and an ARP request: answer from the neighbour table (nothing goes on the wire);
     unknown target: L3 miss event and drop (l3-miss), as the kernel does, no flood; the same
     for an IPv6 neighbour solicitation (nd.py), answered with an advertisement; one for
     duplicate address detection is not answered (drop nd-dad), a malformed one dropped
     (bad-nd), neither flooded (the kernel consumes every solicitation it takes for one);
  4. broadcast/multicast destination: replicate to the flood list;
  5. unicast: FDB hit -> its remotes; miss -> L2 miss event, then the flood list;
  6. nothing to send to: drop (no-destination).
  Every datagram's outer TOS, TTL and DF follow ``outer`` (its ECN field the inner one's); on
  a segment with VXLAN-GBP, its header the group policy of the frame's source MAC.
Rules, wire -> device (``handle_datagrams``):
  1. header invalid (too short, I flag clear, reserved bits in strict mode, inner frame too
     short): drop with that reason, not attributed to a VNI; an outer CE over a not-ECT inner
     packet (RFC 6040): drop (ecn-error), the segment's; other ECN marks are carried inward;
  2. VNI not configured: drop (unknown-vni); the VTEP it came from is not in the segment's
     allowlist: drop (source-not-allowed), nothing learned; strict, and VXLAN-GBP bits set
     where they are reserved (a segment without GBP, or no G bit): drop (reserved-bits); a
     segment with GBP counts the group policy;
  3. inner source MAC multicast or zero: drop (bad-source-mac); equal to the device's own MAC:
     drop (looped); tagged frame with VLANs not allowed: drop (vlan-tagged);
  4. learning on (and no GBP D bit): learn source MAC -> outer source IP; a static MAC from
     another VTEP is a spoof: drop (spoofed-static); past max_addresses or max_learned, or
     faster than learn_rate from one remote: deliver, count the refusal (a rate-limited event);
  5. deliver the inner frame to the segment's device.
What C may do alone (``_rule``, ``_entry``) follows from these rules: see those methods.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from . import gbp, kernels, nd, trace
from .abi import ALLOW_PREFIXES, EntryFlag, From, Miss, RxMatch, Status, Strict, TxMatch
from .batch import FrameBatch
from .datapath import Datapath, Network, Rule, Target
from .driver import DatapathDriver
from .events import Dropped, Event, L2Miss, L3Miss, LearnRefused, MacAged, MacLearned, MacMoved
from .fdb import LearnResult, Remote
from .headers import DEFAULT_OUTER, Outer
from .mirror import Mirror
from .neigh import arp_reply
from .packets import Datagram, DeviceFrame
from .peers import PeerCounters
from .segment import Counters, Segment, SegmentConfig
from .wire import (
    ARP_REQUEST,
    DEFAULT_SRCPORT_RANGE,
    ETH_HLEN,
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_ARP,
    ETH_P_IPV6,
    STATUS_REASONS,
    VXLAN_HLEN,
    VXLAN_PORT,
    ZERO_MAC,
    DropReason,
    encode_header,
    parse_arp,
)

__all__ = ["Engine", "SegmentConfig", "Segment", "Counters", "Datagram", "DeviceFrame"]

_VLAN_TYPES = (ETH_P_8021Q, ETH_P_8021AD)
_FRESH = frozenset((LearnResult.NEW, LearnResult.REFRESHED, LearnResult.MOVED, LearnResult.STATIC))
_NONE3: tuple[bytes, str, int] = (b"", "", -1)


class Engine(DatapathDriver):
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
        outer: Outer = DEFAULT_OUTER,
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
        # the outer header's TOS/TTL/DF from the inner packet, ECN carried both ways (headers.py)
        self.outer = outer
        self.kernels = kernels.load(backend) if backend else kernels.backend
        self.counters = Counters()  # drops before a VNI is known
        self.peers = PeerCounters()  # what this engine sent to / delivered from each VTEP
        self.events_lost = 0
        self._segments: dict[int, Segment] = {}
        self._events: deque[Event] = deque()
        self._max_events = max_events
        self._to_send: list[Datagram] = []
        self._to_device: list[DeviceFrame] = []
        self.datapath: Datapath | None = None
        self._mirror: Mirror | None = None  # what this engine installed in the datapath
        self._refusals: dict[int, tuple[int, float]] = {}  # refused learnings not yet reported
        # where each packet's decision is told (trace.py), or None: checked once per batch
        self.tracer: trace.Tracer | None = None
        # told (True: tracing now) when trace_live attaches the first sink or removes the last,
        # so that whoever drives the datapath lets every batch come back to be traced
        self.on_tracing: Callable[[bool], None] | None = None

    # --- configuration ------------------------------------------------------------------------

    def add_segment(self, config: SegmentConfig) -> Segment:
        """Serve ``config.vni``; ValueError if it is served already."""
        if config.vni in self._segments:
            raise ValueError(f"VNI {config.vni} is configured already")
        seg = Segment(config)
        self._segments[config.vni] = seg
        if self._mirror is not None:
            self._mirror.watch(seg)
            self.sync_datapath()  # served at once: its device can be set next
        return seg

    def remove_segment(self, vni: int) -> None:
        seg = self._segments.pop(vni)
        if self._mirror is not None:
            self._mirror.forget(seg)

    def segment(self, vni: int) -> Segment:
        """The segment of ``vni``; KeyError if it is not configured."""
        return self._segments[vni]

    @property
    def segments(self) -> dict[int, Segment]:
        return dict(self._segments)

    # --- the C datapath: what it may do on its own --------------------------------------------

    def strict_mode(self) -> Strict:
        """How headers are parsed: reserved bits ignored, or a drop (but the VXLAN-GBP bits
        while a segment has GBP on: the engine then drops them for the others itself)."""
        if not self.strict:
            return Strict.OFF
        return Strict.GBP if any(s.gbp for s in self._segments.values()) else Strict.ON

    def _rule(self, seg: Segment, flood: int) -> tuple[Rule, list[Network]]:
        """What C may do for a whole segment (``flood``: the action for the flood list), and
        the source prefixes it admits:
        - device -> wire: VLAN-tagged frames go up when the segment refuses them (rule 2), ARP
          and IPv6 neighbour solicitations when the proxy answers them (rule 3); group
          destinations take the flood action (rule 4);
        - wire -> device: bad source MACs go up (rule 3), and tagged frames when refused; a
          source MAC without an entry is delivered as it is when learning is off (rule 4:
          nothing to learn), else it goes up to be learned; with an allowlist (rule 2), C
          delivers only from the networks it names and the configured remotes (more prefixes
          than C holds: nothing, everything goes up); while ``max_learned`` MACs are learned,
          an unknown source MAC is delivered by C, counted refused (rule 4: nothing could be
          learned), so that a flood of new MACs costs no upcalls;
        - a segment with VXLAN-GBP on: everything goes up (the engine writes and reads groups)."""
        proxied = TxMatch.ARP | TxMatch.ND if seg.proxy else 0
        tx_up = (0 if seg.allow_vlan else TxMatch.VLAN) | proxied
        rx_up = RxMatch.GROUP_SRC | RxMatch.ZERO_SRC | (0 if seg.allow_vlan else RxMatch.VLAN)
        if seg.gbp:  # VXLAN-GBP: the group policy is the engine's, every frame goes up
            tx_up |= TxMatch.ANY
            rx_up |= RxMatch.ANY
        if not seg.fdb.learning:
            miss = Miss.DELIVER
        else:  # full, nothing new can be learned: C delivers and counts it refused
            miss = Miss.REFUSE if seg.fdb.learn_full else Miss.UPCALL
        allow = seg.allow
        nets: list[Network] = []
        rx_from = From.ANY
        if allow is not None:
            nets = list(allow.networks)
            if allow.configured:
                nets += [ipaddress.ip_network(ip) for ip in sorted(seg.configured_remotes())]
            rx_from = From.ALLOWED if len(nets) <= ALLOW_PREFIXES else From.NONE
        return Rule(int(tx_up), int(rx_up), int(miss), flood, int(rx_from)), nets

    def _targets(self, seg: Segment, remotes: tuple[Remote, ...]) -> tuple[Target, ...]:
        dstport, vni = self.dstport, seg.vni
        return tuple(
            Target(r.ip, r.port or dstport, vni if r.vni is None else r.vni) for r in remotes
        )

    def _entry(self, seg: Segment, mac: bytes) -> tuple[tuple[Target, ...], int] | None:
        """What C may do for ``mac`` in ``seg`` (None: nothing to install):
        - device -> wire: frames to a MAC the FDB knows are encapsulated to its remotes (rule 5);
        - wire -> device, learning on: frames from a static MAC are delivered when they come
          from one of its remotes (else a spoof), from a learned MAC when they come from its
          remote, refreshing it (else a move); learning off: delivered from anywhere (nothing
          is learned or checked); never for the device's own MAC (looped, rule 3)."""
        fdb = seg.fdb
        remotes = fdb.lookup(mac)
        own = mac == seg.local_mac
        if remotes is None:
            return ((), 0) if own else None  # an entry with nothing allowed sends it up
        flags = EntryFlag.ENCAP
        if fdb.is_static(mac):
            flags |= EntryFlag.STATIC
        if own:
            pass
        elif not fdb.learning:
            flags |= EntryFlag.DELIVER_ANY
        elif fdb.is_static(mac):
            flags |= EntryFlag.DELIVER
        else:
            flags |= EntryFlag.DELIVER | EntryFlag.REFRESH
        return self._targets(seg, remotes), int(flags)

    # --- device -> wire -----------------------------------------------------------------------

    def handle_frames(
        self, vni: int, batch: FrameBatch, now: float, slots: Iterable[int] | None = None
    ) -> None:
        """Forward the frames in ``batch`` (read from the device of ``vni``); only those in
        ``slots`` if given (the C datapath's upcalls).

        Next: send ``datagrams_to_send()`` and write ``frames_to_device()``, then reuse the batch.
        """
        if self.tracer is not None:  # one slot at a time, each decision recorded
            trace.frames(self, vni, batch, now, slots)
            return
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
            if et == ETH_P_IPV6 and seg.proxy and self._proxy_nd(seg, batch, i):
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
        self.kernels.encap_batch(batch, lo, hi)
        self.kernels.outer_fields(batch, self.outer)
        mv = memoryview(buf)
        out = self._to_send
        dstport = self.dstport
        sent: list[tuple[tuple[Remote, ...], int]] = []  # per peer: (remotes, inner bytes)
        for i, remotes in plan:
            hoff = batch.header_offset(i)
            plen = batch.payload_len[i]
            payload = mv[hoff : hoff + plen]
            sport = batch.sport[i]
            policy = None
            if seg.gbp:
                foff = batch.frame_offset(i)
                policy = seg.gbp_policy(bytes(buf[foff + 6 : foff + 12]))
                if policy is not None:
                    gbp.write(buf, hoff, policy)
                seg.gbp_tx.add(policy, len(remotes))
            for r in remotes:
                if r.vni is not None and r.vni != vni:
                    data = bytearray(encode_header(r.vni) + payload[VXLAN_HLEN:])
                    if policy is not None:
                        gbp.write(data, 0, policy)
                    out.append(Datagram(bytes(data), r.ip, r.port or dstport, sport, r.vni, i))
                else:
                    out.append(Datagram(payload, r.ip, r.port or dstport, sport, vni, i))
                c.tx_packets += 1
                c.tx_bytes += plen - VXLAN_HLEN
            sent.append((remotes, plen - VXLAN_HLEN))
        self.peers.sent(sent)

    def handle_frame(self, vni: int, frame: bytes | bytearray | memoryview, now: float) -> None:
        """One frame from the device (a copy is taken; outputs are bytes). See handle_frames."""
        batch = FrameBatch(1, max(len(frame), ETH_HLEN), VXLAN_HLEN)
        batch.append_frame(frame, vni)
        kern, self.kernels = self.kernels, _PY
        start_send, start_dev = len(self._to_send), len(self._to_device)
        try:
            self.handle_frames(vni, batch, now)
        finally:
            self.kernels = kern
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

    def _proxy_nd(self, seg: Segment, batch: FrameBatch, i: int) -> bool:
        """Answer an IPv6 neighbour solicitation locally; True if the frame was consumed."""
        off = batch.frame_offset(i)
        try:
            ns = nd.parse_solicitation(memoryview(batch.buf)[off : off + batch.frame_len[i]])
        except nd.BadSolicitation:
            self._drop(DropReason.BAD_ND, seg, None)
            return True
        if ns is None:
            return False
        if ns.dad:  # the kernel's answer would go to ::, which no host takes: none at all
            self._drop(DropReason.ND_DAD, seg, None)
            return True
        target = ns.target
        loopback = ns.dst == nd.LOOPBACK
        mac = None if loopback or target[0] == 0xFF else seg.neigh.lookup(target)
        if mac is None:
            seg.counters.l3_misses += 1
            self._event(L3Miss(seg.vni, str(ipaddress.IPv6Address(target))))
            self._drop(DropReason.L3_MISS, seg, None)
            return True
        self._to_device.append(DeviceFrame(seg.vni, nd.advertisement(ns, mac)))
        seg.counters.nd_proxied += 1
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
        completed) by the C datapath.

        Next: write ``frames_to_device()`` to each segment's device, then reuse the batch.
        """
        if not prepared:
            self.prepare_datagrams(batch)
        if self.tracer is not None:  # one slot at a time, each decision recorded
            trace.datagrams(self, batch, sources, now, slots)
            return
        fresh: tuple[bytes, str, int] = _NONE3
        buf = batch.buf
        mv = memoryview(buf)
        out = self._to_device
        strict_gbp = self.strict_mode() == Strict.GBP
        got: list[tuple[str, int]] = []  # per peer: (remote VTEP, inner bytes)
        for i in range(batch.count) if slots is None else slots:
            src = sources[i]
            st = batch.status[i]
            if st:
                # an ECN error has a VNI: it is the segment's (the others are header errors)
                at = self._segments.get(batch.vni[i]) if st == Status.ECN else None
                self._drop(STATUS_REASONS[st], at, src)
                continue
            vni = batch.vni[i]
            seg = self._segments.get(vni)
            if seg is None:
                self._drop(DropReason.UNKNOWN_VNI, None, src)
                continue
            if seg.allow is not None and not seg.permits(src):
                self._drop(DropReason.NOT_ALLOWED, seg, src)
                continue
            policy = None
            hoff = batch.header_offset(i)
            if seg.gbp:
                policy = gbp.read(mv[hoff : hoff + VXLAN_HLEN])
            if strict_gbp and policy is None and gbp.reserved_used(buf, hoff):
                # decap let the GBP bits pass (strict, GBP on somewhere): not here, or no G bit
                self._drop(DropReason.RESERVED_BITS, None, src)
                continue
            if seg.gbp:
                seg.gbp_rx.add(policy)
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
            if policy is not None and policy.dont_learn:
                pass  # VXLAN-GBP's D bit: the sender asks not to be learned from this frame
            elif seg.fdb.learning and (smac, src, vni) != fresh:
                res, old = seg.fdb.learn(smac, src, now)
                fresh = (smac, src, vni) if res in _FRESH else _NONE3
                group = None if policy is None else str(policy)
                if res is LearnResult.NEW:
                    c.learned += 1
                    self._event(MacLearned(vni, smac, src, group))
                elif res is LearnResult.MOVED:
                    c.moved += 1
                    self._event(MacMoved(vni, smac, old or "", src, group))
                elif res is LearnResult.SPOOFED:
                    self._drop(DropReason.SPOOFED_STATIC, seg, src)
                    continue
                elif res is LearnResult.REFUSED or res is LearnResult.RATE_LIMITED:
                    c.learn_refused += 1
                    self._refused(seg, src, res, now)
            out.append(DeviceFrame(vni, mv[off : off + n], i))
            c.rx_packets += 1
            c.rx_bytes += n
            got.append((src, n))
        self.peers.received(got)

    def prepare_datagrams(self, batch: FrameBatch) -> None:
        """Decapsulate the received payloads of ``batch`` (the C datapath does it itself)."""
        self.kernels.decap_batch(batch, self.strict_mode())
        if self.outer.ecn_decap:
            self.kernels.ecn_decap(batch)
        if self.complete_checksums:
            self.checksums_completed += self.kernels.complete_checksums(batch)

    def handle_datagram(
        self, payload: bytes | bytearray | memoryview, source: str, now: float
    ) -> None:
        """One received UDP payload (a copy is taken; outputs are bytes)."""
        batch = FrameBatch(1, max(len(payload), ETH_HLEN), VXLAN_HLEN)
        batch.append_payload(payload)
        kern, self.kernels = self.kernels, _PY
        start_send, start_dev = len(self._to_send), len(self._to_device)
        try:
            self.handle_datagrams(batch, (source,), now)
        finally:
            self.kernels = kern
        self._detach(start_send, start_dev)

    # --- outputs ------------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[Datagram]:
        """Datagrams produced since the last call (the list is handed over, not copied)."""
        out, self._to_send = self._to_send, []
        return out

    def not_sent(self, vni: int, packets: int, nbytes: int) -> None:
        """Of the datagrams of segment ``vni`` counted as sent (``tx_packets``, ``tx_bytes``:
        inner bytes), the kernel refused ``packets`` (the driver counts why): take them back, so
        that tx counts what the kernel took, as the C datapath counts."""
        if packets:
            c = self._segments[vni].counters
            c.tx_packets -= packets
            c.tx_bytes -= nbytes

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
        dp = self.datapath
        for seg in self._segments.values():
            seen = None if dp is None else functools.partial(dp.seen_ms, seg.vni)
            for mac, remote in seg.fdb.expire(now, seen):
                seg.counters.aged += 1
                self._event(MacAged(seg.vni, mac, remote.ip))

    # --- helpers ------------------------------------------------------------------------------

    def _refused(self, seg: Segment, src: str, res: LearnResult, now: float) -> None:
        """Count a refused learning; an event at most once a second per segment."""
        n, last = self._refusals.get(seg.vni, (0, -1.0))
        n += 1
        if last < 0 or now - last >= 1.0:
            reason = "rate" if res is LearnResult.RATE_LIMITED else "full"
            self._event(LearnRefused(seg.vni, src, reason, n))
            n, last = 0, now
        self._refusals[seg.vni] = (n, last)

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
