"""export: kernel commands for a config, including per-entry port and VNI (no root needed)."""

from __future__ import annotations

import dataclasses

from vxlanpy.config import SegmentSpec, VtepConfig
from vxlanpy.export import export_commands


def test_export_commands_from_config() -> None:
    cfg = VtepConfig(
        segments=[
            SegmentSpec(
                vni=42,
                tap="vx42",
                address="198.19.0.1/24",
                remotes=["198.18.0.2", "198.18.0.3"],
                learning=False,
                proxy=True,
                fdb=[("02:00:00:00:00:02", "198.18.0.2")],
                neigh=[("198.19.0.2", "02:00:00:00:00:02")],
            )
        ],
        local="198.18.0.1",
        dstport=8472,
    ).validate()
    out = export_commands(dataclasses.asdict(cfg))
    assert out[0].startswith("ip link add vx42 type vxlan id 42 dstport 8472 local 198.18.0.1")
    assert "nolearning" in out[0] and "proxy" in out[0]
    assert "ip addr add 198.19.0.1/24 dev vx42" in out
    assert "bridge fdb append 00:00:00:00:00:00 dev vx42 dst 198.18.0.2" in out
    assert "bridge fdb append 00:00:00:00:00:00 dev vx42 dst 198.18.0.3" in out
    assert "bridge fdb append 02:00:00:00:00:02 dev vx42 dst 198.18.0.2" in out
    assert "ip neigh add 198.19.0.2 lladdr 02:00:00:00:00:02 dev vx42 nud permanent" in out


def test_export_keeps_entry_port_and_vni() -> None:
    """A running VTEP reports fdb entries as (MAC, IP, port, vni); none may be lost."""
    d = dataclasses.asdict(VtepConfig(segments=[SegmentSpec(vni=7, tap="f1")]).validate())
    d["segments"][0]["fdb"] = [
        ("02:00:c6:13:04:05", "198.18.4.5", 4789, 7),
        ("02:00:c6:13:04:06", "198.18.4.6", None, None),
    ]
    out = export_commands(d)
    assert "bridge fdb append 02:00:c6:13:04:05 dev f1 dst 198.18.4.5 port 4789 vni 7" in out
    assert "bridge fdb append 02:00:c6:13:04:06 dev f1 dst 198.18.4.6" in out
