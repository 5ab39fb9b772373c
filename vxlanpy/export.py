"""Export a vxlanpy configuration as the equivalent Linux kernel commands (iproute2).

The output builds a kernel VTEP that behaves like the vxlanpy one: same VNI, port, local
address, flood list, learning/proxy/ageing/limit, static FDB and neighbour entries. The kernel
has one ``remote`` per device, so every flood-list remote is written as ``bridge fdb append
00:00:00:00:00:00 ... dst IP`` (head-end replication), exactly what vxlanpy's flood list is.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_commands"]

# ip link add ... words for VTEP ([vtep]) and segment settings that are set, before and after
# srcport (the kernel's order)
_LINK_VALUES = (("local", "vtep", "local"), ("group", "seg", "group"), ("dev", "vtep", "dev"))
_LINK_VALUES_2 = (("ttl", "vtep", "ttl"),)
# commands after the link exists, for segment settings that are set
_SET_COMMANDS = (
    ("ip link set {name} mtu {v}", "seg", "mtu"),
    ("ip link set {name} address {v}", "seg", "mac"),
    ("ip addr add {v} dev {name}", "seg", "address"),
    ("ip link set {name} master {v}", "seg", "bridge"),
)


def _present(
    cfg: dict[str, Any], seg: dict[str, Any], table: tuple[tuple[str, str, str], ...]
) -> list[tuple[str, Any]]:
    """(word, value) for each setting of ``table`` that is set (not None, not empty)."""
    out = []
    for word, where, key in table:
        v = (cfg if where == "vtep" else seg).get(key)
        if v is not None and v != "":
            out.append((word, v))
    return out


def export_commands(cfg: dict[str, Any]) -> list[str]:
    """Commands for ``cfg`` (``dataclasses.asdict(VtepConfig)`` or a running VTEP's config)."""
    out: list[str] = []
    for seg in cfg["segments"]:
        name = seg.get("tap") or f"vxlan{seg['vni']}"
        link = [f"ip link add {name} type vxlan id {seg['vni']} dstport {cfg['dstport']}"]
        link += [f"{word} {v}" for word, v in _present(cfg, seg, _LINK_VALUES)]
        lo, hi = cfg.get("srcport", (49152, 65535))
        link.append(f"srcport {lo} {hi}")
        link += [f"{word} {v}" for word, v in _present(cfg, seg, _LINK_VALUES_2)]
        tos = cfg.get("tos")
        if tos is not None:  # ip reads a TOS number as hexadecimal
            link.append(f"tos {tos}" if isinstance(tos, str) else f"tos 0x{tos:02x}")
        if cfg.get("df") in ("set", "inherit"):
            link.append(f"df {cfg['df']}")
        if cfg.get("udpcsum") is False:  # the UDP checksum policy, in the same words
            link.append("noudpcsum")
        link += [w for w in ("udp6zerocsumtx", "udp6zerocsumrx") if cfg.get(w)]
        if not seg.get("learning", True):
            link.append("nolearning")
        if seg.get("proxy"):
            link.append("proxy")
        link.append(f"ageing {int(seg.get('ageing', 300))}")
        if seg.get("max_addresses"):
            link.append(f"maxaddress {seg['max_addresses']}")
        out.append(" ".join(link))
        out += [cmd.format(name=name, v=v) for cmd, v in _present(cfg, seg, _SET_COMMANDS)]
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
