"""Tracing: the decision taken for each packet, told as a record, by whoever took it.

Off, it costs nothing: ``Engine.tracer`` is None and the engine and the driver check it once per
batch. On (a :class:`Tracer` with sinks), the engine runs its rules one slot at a time
(:func:`frames`, :func:`datagrams`) and each slot's record is made from what the rules then did:
the datagrams they produced (remotes, outer header), frames for the device (delivery, proxy
reply), events (miss, learned, moved, dropped with its reason) and counters (flood, proxy,
refused learning). The slots the C fast path handled alone are told from what it left in the
batch (:func:`fast_tx`, :func:`fast_rx`: ``batch.action`` per slot), labelled ``fast-path``.
No rule lives here: a record says what happened, never what should.

``step`` names the rule of the engine's rule list (engine.py's docstring): ``tx.1`` .. ``tx.6``
(device -> wire), ``rx.1`` .. ``rx.5`` (wire -> device).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .abi import Status, Verdict
from .batch import FrameBatch
from .events import Dropped, Event, L2Miss, MacMoved
from .framedesc import frame_fields
from .packets import Datagram, DeviceFrame
from .wire import ETH_HLEN, STATUS_REASONS, DropReason, encode_header, parse_mac

if TYPE_CHECKING:
    from .driver import DatapathDriver
    from .engine import Engine
    from .segment import Segment

__all__ = [
    "FAST_PATH",
    "ENGINE",
    "Hop",
    "TraceRecord",
    "TraceFilter",
    "Tracer",
    "frames",
    "datagrams",
    "fast_tx",
    "fast_rx",
]

log = logging.getLogger("vxlanpy")

FAST_PATH, ENGINE = "fast-path", "engine"
TRUNCATED = "truncated"  # a datagram larger than its receive slot (dropped by C)

_TX_STEP = {
    DropReason.INNER_TOO_SHORT: "tx.1",
    DropReason.VLAN_TAGGED: "tx.2",
    DropReason.L3_MISS: "tx.3",
    DropReason.ND_DAD: "tx.3",
    DropReason.BAD_ND: "tx.3",
    DropReason.NO_DESTINATION: "tx.6",
}
_RX_STEP = {
    DropReason.UNKNOWN_VNI: "rx.2",
    DropReason.NOT_ALLOWED: "rx.2",
    DropReason.RESERVED_BITS: "rx.2",
    DropReason.BAD_SOURCE_MAC: "rx.3",
    DropReason.LOOPED: "rx.3",
    DropReason.VLAN_TAGGED: "rx.3",
    DropReason.SPOOFED_STATIC: "rx.4",
}


class Hop(NamedTuple):
    """One datagram sent for a frame: to ``ip:port`` with ``vni`` in its header, from
    ``sport``."""

    ip: str
    port: int
    vni: int
    sport: int


@dataclass(slots=True)
class TraceRecord:
    """What happened to one packet. ``direction``: ``tx`` (device -> wire) or ``rx``;
    ``handler``: ``fast-path`` (C alone) or ``engine``; ``verdict``: ``sent``, ``delivered``,
    ``proxied`` or ``dropped``; ``rule``: the case of the rule list that applied (``fdb-hit``,
    ``flood``, ``l2-miss``, ``proxy-arp``, ``deliver``, or the drop reason), ``step`` its
    number; ``fdb``: the entry of the destination (tx) or source (rx) MAC: ``static``,
    ``learned`` or ``miss``; ``learn`` (rx): ``new``, ``moved from IP``, ``refreshed``,
    ``static``, ``refused`` or ``off``; ``proxy``: the MAC an ARP request was answered with.
    ``frame`` is the inner frame, ``payload`` the UDP payload (VXLAN header + frame) as sent
    (the first copy) or received."""

    direction: str
    vni: int | None
    handler: str
    verdict: str
    rule: str
    step: str
    frame: bytes
    payload: bytes = b""
    remotes: tuple[Hop, ...] = ()
    fdb: str | None = None
    source: str | None = None
    source_port: int = 0
    learn: str | None = None
    proxy: str | None = None
    drop: str | None = None
    outer: dict[str, int] | None = None
    time: float = 0.0
    frame_info: dict[str, Any] | None = None  # frame_fields(frame), made when first asked

    def info(self) -> dict[str, Any]:
        """What the frame is (framedesc.frame_fields), computed once."""
        if self.frame_info is None:
            self.frame_info = frame_fields(self.frame) if self.frame else {}
        return self.frame_info

    def to_dict(self, with_bytes: bool = False) -> dict[str, Any]:
        """JSON-friendly; ``with_bytes``: the frame and payload as hex too (for captures)."""
        out: dict[str, Any] = {
            "direction": self.direction,
            "vni": self.vni,
            "handler": self.handler,
            "verdict": self.verdict,
            "rule": self.rule,
            "step": self.step,
            "frame": self.info(),
            "time": self.time,
        }
        for k in ("fdb", "source", "learn", "proxy", "drop", "outer"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        if self.source is not None:
            out["source_port"] = self.source_port
        out["remotes"] = [h._asdict() for h in self.remotes]
        if with_bytes:
            out["frame_hex"] = self.frame.hex()
            out["payload_hex"] = self.payload.hex()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TraceRecord:
        """The inverse of ``to_dict(with_bytes=True)`` (what a capture client receives)."""
        return cls(
            direction=d["direction"],
            vni=d.get("vni"),
            handler=d["handler"],
            verdict=d["verdict"],
            rule=d["rule"],
            step=d["step"],
            frame=bytes.fromhex(d.get("frame_hex", "")),
            payload=bytes.fromhex(d.get("payload_hex", "")),
            remotes=tuple(Hop(**h) for h in d.get("remotes", ())),
            fdb=d.get("fdb"),
            source=d.get("source"),
            source_port=d.get("source_port", 0),
            learn=d.get("learn"),
            proxy=d.get("proxy"),
            drop=d.get("drop"),
            outer=d.get("outer"),
            time=d.get("time", 0.0),
            frame_info=d.get("frame"),
        )


class TraceFilter(NamedTuple):
    """Which records a sink wants: all fields given must match (``mac``: source or
    destination; ``ip``: the inner source or destination IP, ARP's sender or target)."""

    vni: int | None = None
    mac: str | None = None
    ip: str | None = None
    direction: str | None = None
    drops: bool = False

    def matches(self, r: TraceRecord) -> bool:
        if self.drops and r.verdict != "dropped":
            return False
        if self.vni is not None and r.vni != self.vni:
            return False
        if self.direction is not None and r.direction != self.direction:
            return False
        if self.mac is None and self.ip is None:
            return True
        f = r.info()
        if self.mac is not None:
            mac = _norm_mac(self.mac)
            if mac not in (f.get("src"), f.get("dst")):
                return False
        return self.ip is None or self.ip in (f.get("src_ip"), f.get("dst_ip"))


def _norm_mac(text: str) -> str:
    try:
        m = parse_mac(text)
    except ValueError:
        return text.lower()
    return ":".join(f"{b:02x}" for b in m)


Sink = Callable[[TraceRecord], None]


class Tracer:
    """Where records go: sinks, each with its filter. Set it as ``Engine.tracer`` while it
    has sinks (``Vtep`` does: see trace_live.py); a sink must not block (queue or drop)."""

    def __init__(self) -> None:
        self._sinks: dict[int, tuple[TraceFilter, Sink]] = {}
        self._next = 0
        self.failed: list[str] = []  # why sinks were removed

    def add(self, sink: Sink, flt: TraceFilter | None = None) -> int:
        """Send matching records to ``sink`` from now on; a token for :meth:`remove`."""
        self._next += 1
        self._sinks[self._next] = (flt or TraceFilter(), sink)
        return self._next

    def remove(self, token: int) -> None:
        self._sinks.pop(token, None)

    def __len__(self) -> int:
        return len(self._sinks)

    def emit(self, rec: TraceRecord) -> None:
        """Hand ``rec`` to each sink whose filter it matches. A sink that raises (a capture's
        disk full) is removed, and logged once: forwarding goes on."""
        rec.time = time.time()
        for token, (flt, sink) in list(self._sinks.items()):
            if flt.matches(rec):
                try:
                    sink(rec)
                except Exception as exc:
                    self._sinks.pop(token, None)
                    self.failed.append(f"{type(exc).__name__}: {exc}")
                    log.error("trace sink removed: %s: %s", type(exc).__name__, exc)


# --- the engine's decisions, one slot at a time ------------------------------------------------


def _run(engine: Engine, call: Callable[[], None]) -> list[Event]:
    """Run ``call`` (one slot through the engine's rules) with the events it emits collected
    apart, then queued as the engine would have queued them; returns them."""
    saved = engine._events
    engine._events = deque()
    try:
        call()
    finally:
        evs = list(engine._events)
        engine._events = saved
        for ev in evs:
            engine._event(ev)
    return evs


def _fdb_state(seg: Segment, mac: bytes) -> str:
    if seg.fdb.lookup(mac) is None:
        return "miss"
    return "static" if seg.fdb.is_static(mac) else "learned"


def _slots(batch: FrameBatch, slots: Iterable[int] | None) -> list[int]:
    return list(range(batch.count)) if slots is None else list(slots)


def frames(
    engine: Engine, vni: int, batch: FrameBatch, now: float, slots: Iterable[int] | None
) -> None:
    """``engine.handle_frames`` with each slot's decision recorded (called by it when a tracer
    is set)."""
    tracer = engine.tracer
    assert tracer is not None
    seg = engine.segment(vni)
    c = seg.counters
    engine.tracer = None
    try:
        for i in _slots(batch, slots):
            frame = bytes(batch.frame(i))
            ns, nd = len(engine._to_send), len(engine._to_device)
            arp, ndp = c.arp_proxied, c.nd_proxied

            def one(i: int = i) -> None:
                engine.handle_frames(vni, batch, now, (i,))

            evs = _run(engine, one)
            sent = engine._to_send[ns:]
            dev = engine._to_device[nd:]
            proxied = (
                "proxy-arp" if c.arp_proxied > arp else "proxy-nd" if c.nd_proxied > ndp else ""
            )
            tracer.emit(_tx_record(seg, batch, i, frame, sent, dev, evs, proxied))
    finally:
        engine.tracer = tracer


def _hops(sent: Sequence[Datagram]) -> tuple[Hop, ...]:
    return tuple(Hop(d.host, d.port, d.vni, d.sport) for d in sent)


def _outer(batch: FrameBatch, i: int) -> dict[str, int]:
    return {"tos": batch.tos[i], "ttl": batch.ttl[i], "df": batch.df[i]}


def _tx_record(
    seg: Segment,
    batch: FrameBatch,
    i: int,
    frame: bytes,
    sent: Sequence[Datagram],
    dev: Sequence[DeviceFrame],
    evs: Sequence[Event],
    proxied: str,
) -> TraceRecord:
    drop = next((e.reason for e in evs if isinstance(e, Dropped)), None)
    group = len(frame) >= ETH_HLEN and bool(frame[0] & 1)
    fdb = None if group or len(frame) < ETH_HLEN else _fdb_state(seg, frame[:6])
    rec = TraceRecord("tx", seg.vni, ENGINE, "sent", "", "", frame)
    if drop is not None:
        rec.verdict, rec.rule, rec.drop = "dropped", drop.value, drop.value
        rec.step = _TX_STEP.get(drop, "tx.3")  # a proxy's own reasons otherwise
        rec.fdb = fdb if drop == DropReason.NO_DESTINATION else None
        return rec
    if proxied:
        reply = frame_fields(bytes(dev[-1].frame)) if dev else {}
        rec.verdict, rec.rule, rec.step = "proxied", proxied, "tx.3"
        # the MAC answered: ARP's sender hardware address; an advertisement comes from it
        rec.proxy = reply.get("arp_sha") if proxied == "proxy-arp" else reply.get("src")
        return rec
    if group:
        rec.rule, rec.step = "flood", "tx.4"
    else:
        missed = any(isinstance(e, L2Miss) for e in evs)
        rec.rule, rec.step, rec.fdb = ("l2-miss" if missed else "fdb-hit"), "tx.5", fdb
    rec.remotes = _hops(sent)
    rec.payload = bytes(sent[0].payload) if sent else b""
    rec.outer = _outer(batch, i)
    return rec


def datagrams(
    engine: Engine,
    batch: FrameBatch,
    sources: Sequence[str],
    now: float,
    slots: Iterable[int] | None,
) -> None:
    """``engine.handle_datagrams`` (payloads already decapsulated) with each slot's decision
    recorded (called by it when a tracer is set)."""
    tracer = engine.tracer
    assert tracer is not None
    engine.tracer = None
    try:
        for i in _slots(batch, slots):
            st = batch.status[i]
            payload = bytes(batch.payload(i))
            frame = bytes(batch.frame(i)) if st in (Status.OK, Status.ECN) else b""
            seg = engine._segments.get(batch.vni[i]) if st == Status.OK else None
            before = _learn_counts(seg)
            nd = len(engine._to_device)

            def one(i: int = i) -> None:
                engine.handle_datagrams(batch, sources, now, (i,), prepared=True)

            evs = _run(engine, one)
            rec = _rx_record(engine, batch, i, frame, payload, sources[i], evs, seg, before)
            rec.verdict = "delivered" if len(engine._to_device) > nd else "dropped"
            tracer.emit(rec)
    finally:
        engine.tracer = tracer


def _learn_counts(seg: Segment | None) -> tuple[int, int, int]:
    if seg is None:
        return (0, 0, 0)
    c = seg.counters
    return (c.learned, c.moved, c.learn_refused)


def _rx_record(
    engine: Engine,
    batch: FrameBatch,
    i: int,
    frame: bytes,
    payload: bytes,
    source: str,
    evs: Sequence[Event],
    seg: Segment | None,
    before: tuple[int, int, int],
) -> TraceRecord:
    st = batch.status[i]
    vni = batch.vni[i] if st in (Status.OK, Status.ECN) else None
    rec = TraceRecord("rx", vni, ENGINE, "delivered", "deliver", "rx.5", frame, payload)
    rec.source = source
    rec.source_port = _source_port(batch, i)
    drop = next((e.reason for e in evs if isinstance(e, Dropped)), None)
    if st:
        drop = STATUS_REASONS[st]
        rec.step = "rx.1"
    if drop is not None:
        rec.rule, rec.drop = drop.value, drop.value
        rec.step = _RX_STEP.get(drop, "rx.1")
    if seg is not None and drop is None or drop == DropReason.SPOOFED_STATIC:
        assert seg is not None
        smac = frame[6:12]
        mv = next((e for e in evs if isinstance(e, MacMoved)), None)
        learned, moved, refused = _learn_counts(seg)
        if drop is not None:
            rec.learn = "spoofed"
        elif learned > before[0]:
            rec.learn = "new"
        elif moved > before[1] and mv is not None:
            rec.learn = f"moved from {mv.old_remote}"
        elif refused > before[2]:
            rec.learn = "refused"
        else:
            rec.learn = _known(seg, smac)
        rec.fdb = _fdb_state(seg, smac)
    return rec


def _known(seg: Segment, smac: bytes) -> str:
    """What delivering a frame from ``smac`` did to the FDB, learning aside: nothing (learning
    off), or its entry was used (static) or refreshed (learned)."""
    if not seg.fdb.learning:
        return "off"
    state = _fdb_state(seg, smac)
    return {"static": "static", "learned": "refreshed"}.get(state, "refused")


def _source_port(batch: FrameBatch, i: int) -> int:
    """The UDP source port in ``batch.addrs`` (sockaddr_in/in6: the port follows the family),
    0 if the slot has no address recorded."""
    from .abi import ADDR_LEN

    a = batch.addrs[i * ADDR_LEN : i * ADDR_LEN + 4]
    return (a[2] << 8) | a[3] if any(a[:2]) else 0


# --- what the C fast path did alone --------------------------------------------------------------


def fast_tx(driver: DatapathDriver, vni: int, batch: FrameBatch, n: int) -> None:
    """Record the slots of ``batch`` (0..n-1) the C datapath encapsulated and sent itself
    (``action > 0``: an installed action); the others go up to the engine, traced there."""
    tracer, dp = driver.tracer, driver.datapath
    assert tracer is not None and dp is not None
    seg = driver._segments[vni]
    for i in range(n):
        a = batch.action[i]
        if a <= 0:
            continue
        frame = bytes(batch.frame(i))
        group = bool(frame[0] & 1)
        rec = TraceRecord("tx", vni, FAST_PATH, "sent", "flood" if group else "fdb-hit", "", frame)
        rec.step = "tx.4" if group else "tx.5"
        rec.fdb = None if group else _fdb_state(seg, frame[:6])
        sport = batch.sport[i]
        rec.remotes = tuple(Hop(t.ip, t.port, t.vni, sport) for t in dp.targets(a))
        rec.payload = bytes(batch.payload(i))
        rec.outer = _outer(batch, i)
        tracer.emit(rec)


def fast_rx(driver: DatapathDriver, batch: FrameBatch, slots: Iterable[int]) -> None:
    """Record the slots the C datapath delivered (``action >= 0``) or dropped (a datagram
    truncated in its slot) itself; upcalls are traced in the engine."""
    tracer, dp = driver.tracer, driver.datapath
    assert tracer is not None and dp is not None
    for i in slots:
        a = batch.action[i]
        if a == Verdict.UPCALL:
            continue
        src = dp.source(batch, i)
        if a == Verdict.DROP:
            rec = TraceRecord("rx", None, FAST_PATH, "dropped", TRUNCATED, "rx.1", b"")
            rec.drop = TRUNCATED
        else:
            vni = batch.vni[i]
            frame = bytes(batch.frame(i))
            rec = TraceRecord("rx", vni, FAST_PATH, "delivered", "deliver", "rx.5", frame)
            # the header is rebuilt: writing to a TAP with a virtio-net header overwrote it
            rec.payload = encode_header(vni) + frame
            seg = driver._segments.get(vni)
            if seg is not None:
                rec.fdb = _fdb_state(seg, frame[6:12])
                rec.learn = _known(seg, frame[6:12])
        rec.source, rec.source_port = src, _source_port(batch, i)
        tracer.emit(rec)
