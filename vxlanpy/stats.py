"""A running VTEP's counters, assembled in one place from where each is counted.

Every counter has one home: the engine counts its decisions (per segment, and drops before a
VNI is known), the C datapath what it forwards itself (abi.SEG_COUNTERS per segment,
abi.DP_COUNTERS for the whole datapath), each TAP its refused writes and the checksums it
completed on reads, the UDP transport its socket errors, the ICMP reports of its send sockets,
the kernel's drops at its receive buffer and the super-frames it cut. This
module is the one that knows them all and adds the C datapath's to the engine's where the two
count the same thing (``stats --json`` is what it returns; docs/reference.md lists the keys).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from .engine import Engine

if TYPE_CHECKING:
    from .tunnel import Vtep

__all__ = ["segment_stats", "vtep_stats", "GRO_KEYS"]

#: the UDP GRO counters of the receive pump, as ``stats["gro"]`` names them
GRO_KEYS = {
    "receives": "gro_receives",
    "coalesced": "gro_coalesced",
    "split": "gro_split",
    "pending_dropped": "gro_pending_dropped",
}


def segment_stats(engine: Engine, vni: int) -> dict[str, Any]:
    """The counters of ``vni``: the engine's, plus what the C datapath forwarded itself."""
    seg = engine.segment(vni)
    out = seg.counters.to_dict()
    if engine.datapath is not None:
        for k, v in engine.datapath.segment_counters(vni).items():
            if k in out:
                out[k] += v
    if seg.gbp:  # VXLAN-GBP: datagrams per group policy ("none": without one)
        out["gbp"] = {"rx": seg.gbp_rx.to_dict(), "tx": seg.gbp_tx.to_dict()}
    return out


def vtep_stats(vtep: Vtep) -> dict[str, Any]:
    """Counters per VNI, drops before a VNI was known, socket and device errors, offloads."""
    engine, t, dp = vtep.engine, vtep.transport, vtep.engine.datapath
    socket_errors: Counter[str] = Counter(t.errors if t else {})
    if t is not None and t.icmp.unqueued:
        socket_errors["icmp-unqueued"] = t.icmp.unqueued
    tap_errors = {tap.name: tap.write_errors for tap in vtep.taps.values()}
    checksums = engine.checksums_completed + sum(
        tap.checksums_completed for tap in vtep.taps.values()
    )
    gso_frames = t.gso_frames if t else 0
    gro = dict.fromkeys(GRO_KEYS, 0)
    sender = vtep.pumps.sender_sent() if vtep.pumps is not None else None
    if dp is not None:
        c = dp.counters()
        gro = {k: c[field] for k, field in GRO_KEYS.items()}
        socket_errors.update(c["send_errors"])
        if c["truncated"]:
            socket_errors["truncated"] += c["truncated"]
        checksums += c["checksums_completed"]
        for vni, tap in vtep.taps.items():
            seg = dp.segment_counters(vni)
            gso_frames += seg["gso_frames"]
            tap_errors[tap.name] += seg["tap_write_errors"]
    return {
        "segments": {vni: segment_stats(engine, vni) for vni in engine.segments},
        "unattributed": engine.counters.to_dict(),
        "socket_errors": dict(socket_errors),
        "icmp": t.icmp.to_dict() if t else {},
        "rx_socket_dropped": t.rx_dropped() if t else 0,
        "tap_write_errors": tap_errors,
        "events_lost": vtep.events_lost + engine.events_lost,
        "checksums_completed": checksums,
        "gso_errors": t.gso_errors if t else 0,
        "gso_frames": gso_frames,
        "fast_path": dp is not None,
        "send_thread": sender is not None,
        "send_thread_frames": sender or 0,
        "udp_gro": vtep.udp_gro,
        "gro": gro,
    }
