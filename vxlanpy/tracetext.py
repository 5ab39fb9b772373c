"""Trace records as text: one line per packet (``trace --live``, capture comments), and the
step-by-step explanation of ``trace`` (what would happen). Input: ``TraceRecord.to_dict()``."""

from __future__ import annotations

from typing import Any

__all__ = ["record_line", "record_steps"]

_RULES = {
    "fdb-hit": "unicast, FDB hit: to the entry's remotes",
    "l2-miss": "unicast, FDB miss (L2 miss): flooded to the flood list",
    "flood": "broadcast/multicast destination: replicated to the flood list",
    "proxy-arp": "ARP request answered by the proxy from the neighbour table",
    "proxy-nd": "IPv6 neighbour solicitation answered by the proxy from the neighbour table",
    "deliver": "delivered to the segment's device",
}
_STEPS = {
    "tx.1": "frame shorter than an Ethernet header",
    "tx.2": "802.1Q/802.1ad tagged frame, VLANs not allowed on the segment",
    "tx.3": "proxy on and an ARP request or IPv6 neighbour solicitation",
    "tx.4": "broadcast or multicast destination",
    "tx.5": "unicast destination: FDB lookup",
    "tx.6": "nothing to send to",
    "rx.1": "VXLAN header checked",
    "rx.2": "VNI and outer source checked",
    "rx.3": "inner source MAC and tag checked",
    "rx.4": "learning: inner source MAC -> outer source IP",
    "rx.5": "delivery to the segment's device",
}


def _frame(f: dict[str, Any]) -> str:
    if "src" not in f:
        return f"{f.get('length', 0)}-byte frame" if f else "no inner frame"
    s = f"{f['src']} > {f['dst']}"
    if "vlan" in f:
        s += f" vlan {f['vlan']}"
    if f.get("arp") == "request":
        return f"{s} ARP who-has {f['dst_ip']} tell {f['src_ip']}"
    if f.get("arp") == "reply":
        return f"{s} ARP reply {f['src_ip']} is-at {f['arp_sha']}"
    if "src_ip" in f:
        return f"{s} {f['src_ip']} > {f['dst_ip']} {f.get('proto', '')}".rstrip()
    return f"{s} ethertype {f.get('ethertype', '?')}"


def _hops(r: dict[str, Any]) -> str:
    return ", ".join(f"{h['ip']}:{h['port']} vni {h['vni']}" for h in r.get("remotes", ()))


def record_line(r: dict[str, Any]) -> str:
    """``tx vni 42 02:..:01 > 02:..:09 198.19.0.1 > 198.19.0.9 icmp: fdb-hit (tx.5, fdb
    static) -> 198.18.0.2:4789 vni 42 [fast-path]``."""
    vni = "vni ?" if r.get("vni") is None else f"vni {r['vni']}"
    head = f"{r['direction']} {vni} {_frame(r.get('frame', {}))}"
    if r["direction"] == "rx" and r.get("source"):
        head += f" from {r['source']}"
    detail = [r["step"]]
    if r.get("fdb"):
        detail.append(f"fdb {r['fdb']}")
    if r.get("learn"):
        detail.append(f"learn {r['learn']}")
    what = f"{r['rule']} ({', '.join(detail)})"
    if r["verdict"] == "dropped":
        what = f"dropped: {r.get('drop', r['rule'])} ({', '.join(detail)})"
    elif r["verdict"] == "proxied":
        what += f" is-at {r.get('proxy')}"
    elif r["verdict"] == "sent":
        what += f" -> {_hops(r)}"
    return f"{head}: {what} [{r['handler']}]"


def record_steps(r: dict[str, Any]) -> list[str]:
    """What happened, step by step (as Open vSwitch's ofproto/trace tells a flow)."""
    out = [
        f"{'device -> wire' if r['direction'] == 'tx' else 'wire -> device'}, "
        f"vni {r.get('vni') if r.get('vni') is not None else '?'}",
        f"  frame: {_frame(r.get('frame', {}))}",
    ]
    if r["direction"] == "rx":
        out.append(f"  outer source: {r.get('source')}:{r.get('source_port', 0)}")
    out.append(f"  rule {r['step']}: {_STEPS.get(r['step'], r['step'])}")
    if r.get("fdb"):
        mac = "destination" if r["direction"] == "tx" else "source"
        out.append(f"  FDB entry of the {mac} MAC: {r['fdb']}")
    if r.get("learn"):
        out.append(f"  learning: {r['learn']}")
    if r["verdict"] == "dropped":
        out.append(f"  result: dropped, reason {r.get('drop', r['rule'])}")
    elif r["verdict"] == "proxied":
        rule = _RULES.get(r["rule"], r["rule"])
        out.append(f"  result: {rule}: is-at {r.get('proxy')}; nothing on the wire")
    elif r["verdict"] == "sent":
        out.append(f"  result: {_RULES.get(r['rule'], r['rule'])}")
        o = r.get("outer") or {}
        for h in r.get("remotes", ()):
            out.append(
                f"    -> udp {h['sport']} > {h['ip']}:{h['port']}, vxlan vni {h['vni']}"
                f", tos {o.get('tos', 0)} ttl {o.get('ttl', 0) or 'auto'}"
                f"{' df' if o.get('df') else ''}"
            )
    else:
        out.append(f"  result: {_RULES['deliver']}")
    how = "the C fast path alone" if r["handler"] == "fast-path" else "the engine (Python)"
    out.append(f"  handled by: {how}")
    return out
