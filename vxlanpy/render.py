"""Text forms of control-socket answers, shared by ``vxlanpy-tunnel`` and the lab.

Each function takes the JSON-friendly dict the control socket returns (``fdb show`` rows,
``neigh show`` rows, ``stats``, events) and gives the line(s) a person reads, in iproute2's
vocabulary where there is one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .io.errqueue import KINDS

if TYPE_CHECKING:
    from .config import VtepConfig

__all__ = ["fdb_line", "neigh_line", "stats_text", "event_line", "listening"]


def fdb_line(r: dict[str, Any]) -> str:
    """One ``fdb show`` row as ``bridge fdb show`` prints it."""
    s = f"{r['mac']} dev {r['dev']} dst {r['dst']}"
    if r.get("port"):
        s += f" port {r['port']}"
    s += f" vni {r['vni']} self"
    return s + (" permanent" if r["permanent"] else f" age {r['age']:.0f}s")


def neigh_line(r: dict[str, Any]) -> str:
    """One ``neigh show`` row as ``ip neigh show`` prints it."""
    return f"{r['ip']} dev {r['dev']} lladdr {r['lladdr']} {r['state']}"


def stats_text(st: dict[str, Any]) -> str:
    """The ``stats`` answer as a few lines per segment, then the VTEP-wide counters."""
    lines = []
    for vni, c in st["segments"].items():
        nd = f"nd-proxied {c['nd_proxied']}  " if c.get("nd_proxied") else ""  # when not 0
        lines.append(
            f"vni {vni}: rx {c['rx_packets']} packets {c['rx_bytes']} bytes, "
            f"tx {c['tx_packets']} packets {c['tx_bytes']} bytes, dropped {c['dropped']}"
        )
        lines.append(
            f"  floods {c['floods']}  l2-misses {c['l2_misses']}  l3-misses {c['l3_misses']}  "
            f"arp-proxied {c['arp_proxied']}  {nd}learned {c['learned']}  moved {c['moved']}  "
            f"aged {c['aged']}  learn-refused {c['learn_refused']}"
        )
        if c["drops"]:
            lines.append("  drops: " + ", ".join(f"{k} {n}" for k, n in c["drops"].items()))
    un = st["unattributed"]["drops"]
    lines.append(
        "before a VNI was known: " + (", ".join(f"{k} {n}" for k, n in un.items()) or "no drops")
    )
    if st.get("socket_errors"):
        lines.append(
            "socket errors: " + ", ".join(f"{k} {n}" for k, n in st["socket_errors"].items())
        )
    if st.get("rx_socket_dropped"):
        lines.append(f"dropped by the kernel, receive buffer full: {st['rx_socket_dropped']}")
    lost = st.get("losses") or {}
    if lost.get("total"):
        where = ", ".join(
            f"{k.replace('_', ' ')} {n}" for k, n in lost.items() if n and k != "total"
        )
        lines.append(f"lost: {lost['total']} ({where})")
    for ip, c in (st.get("icmp") or {}).items():
        lines.append(_icmp_line(ip, c))
    for ip, c in (st.get("peers") or {}).items():
        lines.append(
            f"peer {ip}: rx {c['rx_packets']} packets {c['rx_bytes']} bytes, "
            f"tx {c['tx_packets']} packets {c['tx_bytes']} bytes"
        )
    lines.append(f"checksums completed: {st.get('checksums_completed', 0)}")
    return "\n".join(lines)


def _icmp_line(ip: str, c: dict[str, Any]) -> str:
    """``icmp errors for IP: unreachable N, ..., mtu M (last type T code C from NODE)``."""
    text = f"icmp errors for {ip}: " + ", ".join(
        f"{k.replace('_', '-')} {c[k]}" for k in KINDS if c.get(k)
    )
    if c.get("mtu"):
        text += f", mtu {c['mtu']}"
    last = c.get("last")
    if last:
        text += f" (last type {last['type']} code {last['code']} from {last['from']})"
    return text


def event_line(ev: dict[str, Any]) -> str:
    """One event as ``NAME key value key value ...``."""
    return str(ev["event"]) + "".join(f" {k} {v}" for k, v in ev.items() if k != "event")


def listening(cfg: VtepConfig, mtus: dict[int, int]) -> str:
    """The line ``run`` starts with: what a VTEP of ``cfg`` listens on and serves (``mtus``:
    each VNI's TAP MTU, as opened)."""
    parts = []
    for spec in cfg.segments:
        mtu = mtus.get(spec.vni)
        dest = ",".join(spec.remotes) or ""
        if spec.group:
            dest = (dest + "," if dest else "") + f"group {spec.group}"
        parts.append(
            f"vni {spec.vni} tap {spec.tap_name} mtu {mtu if mtu else '?'}"
            + (f" {spec.address}" if spec.address else "")
            + (f" -> {dest}" if dest else "")
        )
    bound = cfg.local if cfg.local and not any(s.group for s in cfg.segments) else "*"
    where = f"{bound}:{cfg.dstport}"
    return f"listening on udp {where}; " + "; ".join(parts)
