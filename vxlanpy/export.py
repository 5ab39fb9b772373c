"""Export a vxlanpy configuration as the equivalent Linux kernel commands (iproute2).

The output builds a kernel VTEP that behaves like the vxlanpy one: same VNI, port, local
address, flood list, learning/proxy/ageing/limit, static FDB and neighbour entries. The kernel
has one ``remote`` per device, so every flood-list remote is written as ``bridge fdb append
00:00:00:00:00:00 ... dst IP`` (head-end replication), exactly what vxlanpy's flood list is.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_commands"]


def export_commands(cfg: dict[str, Any]) -> list[str]:
    """Commands for ``cfg`` (``dataclasses.asdict(VtepConfig)`` or a running VTEP's config)."""
    out: list[str] = []
    for seg in cfg["segments"]:
        name = seg.get("tap") or f"vxlan{seg['vni']}"
        link = [f"ip link add {name} type vxlan id {seg['vni']} dstport {cfg['dstport']}"]
        if cfg.get("local"):
            link.append(f"local {cfg['local']}")
        if seg.get("group"):
            link.append(f"group {seg['group']}")
        if cfg.get("dev"):
            link.append(f"dev {cfg['dev']}")
        lo, hi = cfg.get("srcport", (49152, 65535))
        link.append(f"srcport {lo} {hi}")
        if cfg.get("ttl") is not None:
            link.append(f"ttl {cfg['ttl']}")
        if cfg.get("tos") is not None:
            link.append(f"tos {cfg['tos']}")
        if cfg.get("df") == "set":
            link.append("df set")
        if not seg.get("learning", True):
            link.append("nolearning")
        if seg.get("proxy"):
            link.append("proxy")
        link.append(f"ageing {int(seg.get('ageing', 300))}")
        if seg.get("max_addresses"):
            link.append(f"maxaddress {seg['max_addresses']}")
        out.append(" ".join(link))
        if seg.get("mtu"):
            out.append(f"ip link set {name} mtu {seg['mtu']}")
        if seg.get("mac"):
            out.append(f"ip link set {name} address {seg['mac']}")
        if seg.get("address"):
            out.append(f"ip addr add {seg['address']} dev {name}")
        if seg.get("bridge"):
            out.append(f"ip link set {name} master {seg['bridge']}")
        out.append(f"ip link set {name} up")
        # fdb entries: (MAC, IP) from a config file, (MAC, IP, port, vni) from a running VTEP
        flood = [("00:00:00:00:00:00", ip) for ip in seg.get("remotes", [])]
        seen = set()
        for entry in flood + [tuple(x) for x in seg.get("fdb", [])]:
            mac, ip, port, vni = (*entry, None, None)[:4]
            if (mac, ip, port, vni) in seen:
                continue
            seen.add((mac, ip, port, vni))
            line = f"bridge fdb append {mac} dev {name} dst {ip}"
            if port is not None:
                line += f" port {port}"
            if vni is not None:
                line += f" vni {vni}"
            out.append(line)
        for ip, mac in seg.get("neigh", []):
            out.append(f"ip neigh add {ip} lladdr {mac} dev {name} nud permanent")
    return out
