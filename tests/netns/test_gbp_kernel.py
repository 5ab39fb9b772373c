"""VXLAN-GBP against the kernel's ``gbp`` vxlan, both ways, with nftables reading and setting
the packet mark the kernel maps the group to.

vxlanpy sends group 0x1234 with the A flag: host b's kernel turns it into the mark 0x81234
(ID | VXLAN_GBP_POLICY_APPLIED), which an nftables rule in b's prerouting counts; b's output
rule marks what it sends through its vxlan device 0x42, which the kernel puts in the header
and vxlanpy counts per group. The datagrams on the wire equal scapy's VXLAN-GBP layer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Vxlanpy, ping
from scapy.compat import raw
from scapy.layers.inet import IP, UDP
from scapy.layers.vxlan import VXLAN
from scapy.utils import rdpcap
from test_outer_header import capture

from vxlanpy.netns import NetnsError, Topology, ensure_tools

UA, UB = "198.18.0.1", "198.18.0.2"
RULES = """
table inet vxgbp {
    chain pre {
        type filter hook prerouting priority 0;
        iifname "vx0" meta mark 0x00081234 counter
    }
    chain out {
        type filter hook output priority 0;
        oifname "vx0" meta mark set 0x42
    }
}
"""


def _nft() -> None:
    try:
        ensure_tools({"nft": "nftables"})
    except NetnsError as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true but {exc}")
        pytest.skip(str(exc))


@pytest.mark.parametrize("backend", ["cffi", "python"])
def test_gbp_group_is_the_kernels_mark_both_ways(
    topo: Topology, tmp_path: Path, backend: str
) -> None:
    _nft()
    a, b = topo.add_host("a"), topo.add_host("b")
    dev = topo.link(a, b, f"{UA}/24", f"{UB}/24")
    topo.kernel_vxlan(b, vni=10, dev=dev, remote=UA, address="198.19.0.2/24", extra=["gbp"])
    rules = tmp_path / "gbp.nft"
    rules.write_text(RULES)
    b.sh("nft", "-f", str(rules))
    v = Vxlanpy(
        topo,
        a,
        ["--vni", "10", "--local", UA, "--remote", UB, "--tap", "vx0"]
        + ["--address", "198.19.0.1/24", "--gbp", "--gbp-group", "0x1234/A"],
        backend=backend,
    )
    pcap = tmp_path / "b.pcap"
    with capture(topo, b, dev, pcap, "udp", "and", "src", UA):
        ping(a, "198.19.0.2", count=5)
        ping(b, "198.19.0.1", count=5)
    assert v.stop() == 0

    # a -> b: the kernel gave the group and the A flag to the packets as their mark
    chain = json.loads(b.sh("nft", "-j", "list", "chain", "inet", "vxgbp", "pre"))
    counters = [x["counter"] for r in chain["nftables"] if "rule" in r
                for x in r["rule"]["expr"] if "counter" in x]  # fmt: skip
    assert counters and counters[0]["packets"] >= 10, chain  # 5 requests, 5 replies
    # b -> a: the mark b's output rule set arrived as the group, counted per group
    seg = v.stats()["segments"]["10"]  # type: ignore[index]
    assert seg["gbp"]["rx"].get("0x0042", 0) >= 10, seg["gbp"]
    assert seg["gbp"]["tx"].get("0x1234/A", 0) >= 10, seg["gbp"]
    # on the wire: scapy's VXLAN-GBP layer, byte for byte
    want = raw(VXLAN(flags="Instance+G", gpflags="A", gpid=0x1234, vni=10))
    headers = [raw(p[UDP].payload)[:8] for p in rdpcap(str(pcap)) if UDP in p and IP in p]
    assert headers and all(h == want for h in headers), {h.hex() for h in headers}
