"""What would happen to a packet: the engine's real rules run on a copy of the state, traced.

``vxlanpy-tunnel trace`` without ``--live``: a frame from a segment's device, or a datagram
from the wire with its outer source, goes through a copy of the engine (its segments deep-
copied: FDB, neighbours, limits, counters) with a C datapath of its own installed from that copy
when the original forwards in C, so that what the trace says is what the dataplane does,
fast path included. Nothing is sent and the original state is untouched. The copy costs time
in proportion to the FDB's size (about a second per 10^6 entries).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from . import datapath as datapath_mod
from .batch import FrameBatch
from .config import VtepConfig
from .datapath import Datapath, set_source
from .engine import Engine
from .events import Event
from .packets import Datagram, DeviceFrame
from .trace import Tracer, TraceRecord
from .wire import ETH_HLEN, VXLAN_HLEN, VXLAN_PORT, encode_header, parse_mac

__all__ = ["Outcome", "clone_engine", "engine_from_config", "simulate"]


@dataclass
class Outcome:
    """What the copy did: the records (one per packet), and its outputs and events."""

    records: list[TraceRecord]
    datagrams: list[Datagram] = field(default_factory=list)
    to_device: list[DeviceFrame] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": [r.to_dict() for r in self.records],
            "datagrams": [
                {
                    "host": d.host,
                    "port": d.port,
                    "sport": d.sport,
                    "vni": d.vni,
                    "bytes": len(d.payload),
                }
                for d in self.datagrams
            ],
            "to_device": [{"vni": f.vni, "bytes": len(f.frame)} for f in self.to_device],
            "events": [e.to_dict() for e in self.events],
        }


def clone_engine(engine: Engine, fast: bool | None = None) -> Engine:
    """A copy of ``engine``'s settings and segments (nothing shared with it), with a C
    datapath of its own if ``fast`` (default: if ``engine`` has one)."""
    e = Engine(
        dstport=engine.dstport,
        srcport=engine.srcport,
        strict=engine.strict,
        complete_checksums=engine.complete_checksums,
        outer=engine.outer,
    )
    e.kernels = engine.kernels
    for vni, seg in engine.segments.items():
        if engine.datapath is not None:
            engine.refresh_from_datapath(vni)  # the last-seen times C keeps
        watcher = seg._watcher  # the original's mirror: not copied
        memo: dict[int, Any] = {} if watcher is None else {id(watcher): None}
        e._segments[vni] = copy.deepcopy(seg, memo)
    if fast if fast is not None else engine.datapath is not None:
        e.attach_datapath(Datapath())
    return e


def engine_from_config(cfg: VtepConfig) -> Engine:
    """The engine a VTEP with ``cfg`` starts with (its devices' MACs: as configured, else
    unknown), forwarding in C when ``cfg`` says so and C is built."""
    cfg.validate()
    e = Engine(dstport=cfg.dstport, srcport=cfg.srcport, strict=cfg.strict, outer=cfg.outer())
    for spec in cfg.segments:
        mac = parse_mac(spec.mac) if spec.mac else None
        e.add_segment(spec.segment_config(local_mac=mac, allow=cfg.allow))
    if cfg.fast_path and datapath_mod.available():
        e.attach_datapath(Datapath())
    return e


def simulate(
    engine: Engine,
    *,
    now: float,
    vni: int | None = None,
    frame: bytes | None = None,
    payload: bytes | None = None,
    source: str | None = None,
    source_port: int = VXLAN_PORT,
) -> Outcome:
    """Run one packet through ``engine`` (use a copy: :func:`clone_engine`) traced: ``frame``
    from the device of ``vni``, or ``payload`` (a UDP payload; or ``frame`` with ``vni``,
    encapsulated) received from ``source``. ValueError for an unknown VNI or a packet that
    does not fit."""
    records: list[TraceRecord] = []
    tracer = Tracer()
    tracer.add(records.append)
    engine.tracer = tracer
    try:
        if source is None:
            if frame is None or vni is None:
                raise ValueError("a frame from a device needs its VNI and the frame")
            if vni not in engine.segments:
                raise ValueError(f"VNI {vni} is not configured")
            b = FrameBatch(1, max(len(frame), ETH_HLEN))
            b.append_frame(frame, vni)
            if engine.datapath is not None:
                engine.forward_frames(vni, b, now)
            else:
                engine.handle_frames(vni, b, now)
        else:
            if payload is None:
                if frame is None or vni is None:
                    raise ValueError("a datagram needs a payload, or a frame and its VNI")
                payload = encode_header(vni) + frame
            b = FrameBatch(1, max(len(payload), ETH_HLEN + VXLAN_HLEN))
            b.append_payload(payload)
            set_source(b, 0, source, source_port)
            if engine.datapath is not None:
                engine.forward_datagrams(b, now)
            else:
                engine.handle_datagrams(b, [source], now)
        out = Outcome(records, engine.datagrams_to_send(), engine.frames_to_device())
        out.datagrams = [d._replace(payload=bytes(d.payload)) for d in out.datagrams]
        out.to_device = [f._replace(frame=bytes(f.frame)) for f in out.to_device]
        out.events = list(engine.events())
        return out
    finally:
        engine.tracer = None
