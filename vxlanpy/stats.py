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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .engine import Engine
from .peers import BUCKETS, OTHERS, merge_peers

if TYPE_CHECKING:
    from .tunnel import Vtep

__all__ = [
    "segment_stats",
    "vtep_stats",
    "losses",
    "device_tx_dropped",
    "peer_stats",
    "table_sizes",
    "batch_stats",
    "GRO_KEYS",
]

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
    links = vtep.tgso.links  # tunnel GSO's refresher: the remotes it has a link to
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
        "datapath_thread": vtep.datapath_thread,
        "send_thread_frames": sender or 0,
        "udp_gro": vtep.udp_gro,
        "gro": gro,
        "losses": losses(vtep, socket_errors, tap_errors, gro),
        "tap_queue_dropped": vtep.tap_queue_dropped(),
        "tunnel_gso": {  # io/tgso.py
            "mode": vtep.tgso.mode,
            "on": vtep.tgso.on,
            "why_not": vtep.tgso.why_not,
            "frames": dp.counters()["tgso_frames"] if dp is not None else 0,
            "remotes_linked": len(links.linked) if links else 0,
            "withdrawals": links.withdrawals if links else 0,
        },
        "peers": peer_stats(engine),
        "tables": table_sizes(engine),
        "fast_path_packets": {
            vni: {k: c[f"{k}_packets"] for k in ("rx", "tx")}
            for vni, c in ((v, dp.segment_counters(v)) for v in engine.segments)
        }
        if dp is not None
        else {},
        "batches": batch_stats(vtep),
    }


def peer_stats(engine: Engine) -> dict[str, dict[str, int]]:
    """Per remote VTEP (by IP): packets and inner bytes sent to it and delivered from it, the
    engine's and the C datapath's added up; at most abi.MAX_PEERS by name, the others added up
    under ``other-peers``."""
    parts: list[Mapping[str, Sequence[int]]] = []
    dp = engine.datapath
    if dp is not None:
        rows: dict[str, Sequence[int]] = dict(dp.peers())
        rows[OTHERS] = rows.pop("")
        parts.append(rows)
    parts.append(engine.peers.rows)
    if any(engine.peers.others):
        parts.append({OTHERS: engine.peers.others})
    return merge_peers(parts)


def table_sizes(engine: Engine) -> dict[int, dict[str, int]]:
    """Per VNI: unicast FDB entries (``fdb``, static and learned), of them ``learned``, the
    flood list's remotes (``flood``) and the neighbour table's entries (``neigh``)."""
    out = {}
    for vni, seg in engine.segments.items():
        fdb = seg.fdb
        out[vni] = {
            "fdb": fdb.address_count,
            "learned": fdb.learned_count,
            "flood": len(fdb.flood_list()),
            "neigh": len(seg.neigh),
        }
    return out


def batch_stats(vtep: Vtep) -> dict[str, Any]:
    """The sizes of the batches the pumps read (``tx``: from the TAPs, ``rx``: from the
    socket), C's and the Python pumps' added up: ``sizes`` (batches of at most N frames, for N
    in 1, 2, 4, ... 1024, each batch in the first that holds it) and ``frames`` (in all)."""
    out = {}
    dp = vtep.engine.datapath
    c = dp.counters() if dp is not None else None
    for way, py in vtep.batches.items():
        sizes = list(py.counts)
        frames = py.frames
        if c is not None:
            sizes = [a + b for a, b in zip(sizes, c[f"{way}_batches"], strict=True)]
            frames += c[f"{way}_batch_frames"]
        out[way] = {"sizes": dict(zip(map(str, BUCKETS), sizes, strict=True)), "frames": frames}
    return out


# socket_errors that lose no packet: a fallback source port, a stray datagram on a send
# socket, an ICMP report that found the error queue full (the error, not a packet, is lost)
_NOT_LOST = frozenset({"srcport-unavailable", "stray", "icmp-unqueued", "truncated"})


def losses(
    vtep: Vtep,
    socket_errors: Mapping[str, int],
    tap_errors: Mapping[str, int],
    gro: Mapping[str, int],
) -> dict[str, int]:
    """Every place a packet can be lost against vxlanpy's will (its decisions, the drop
    reasons, are counted apart), in the order a frame meets them, and the total: ``tap_queue``
    (the kernel's queue of a TAP towards vxlanpy: the host sent faster than it was read),
    ``send`` (sends the kernel refused: socket_errors), ``gso`` (super-frames that could not be
    cut), then on receive ``rx_socket`` (the receiving socket's buffer full), ``truncated``
    (larger than a slot), ``gro_pending`` (the receive pump's spill slots full), ``tap_write``
    (the TAP refused a frame)."""
    t = vtep.transport
    out = {
        "tap_queue": sum(vtep.tap_queue_dropped().values()),
        "send": sum(n for k, n in socket_errors.items() if k not in _NOT_LOST),
        "gso": t.gso_errors if t is not None else 0,
        "rx_socket": t.rx_dropped() if t is not None else 0,
        "truncated": socket_errors.get("truncated", 0),
        "gro_pending": gro.get("pending_dropped", 0),
        "tap_write": sum(tap_errors.values()),
    }
    out["total"] = sum(out.values())
    return out


def device_tx_dropped(names: list[str]) -> dict[str, int]:
    """``tx_dropped`` of these network devices in this process's namespace (/proc/net/dev): for
    a TAP, frames the kernel could not queue towards its reader."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/net/dev") as f:
            lines = f.readlines()[2:]
    except OSError:
        return out
    for line in lines:
        name, _, rest = line.partition(":")
        name = name.strip()
        if name in names:
            fields = rest.split()
            if len(fields) >= 12:
                out[name] = int(fields[11])
    return out
