"""The outer IP header against the kernel's vxlan, both ways, in the same namespace and run.

Device -> wire: the same inner packets (pings with chosen TOS / ECN, TTL and DF, IPv6 with a
traffic class, ARP) leave host a once through vxlanpy and once through a kernel vxlan device
with the same ``tos``/``ttl``/``df`` settings; host b's underlay is captured and the outer
TOS, TTL and DF of each pair must be equal. Wire -> device: host b sends crafted VXLAN
datagrams (scapy) with every outer x inner ECN combination to vxlanpy and to a kernel device
in host a; what each delivered (captured on the TAP and on the kernel device) must be the
same: RFC 6040 marks, a drop for outer CE over a not-ECT packet, valid inner checksums.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest
from conftest import Vxlanpy, capture
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.utils import rdpcap

from vxlanpy.netns import Host, Topology

UA, UB = "198.18.0.1", "198.18.0.2"
UA6, UB6 = "2001:2::1", "2001:2::2"
# overlay: the vxlanpy segment (VNI 10, port 4789) and the kernel's (VNI 11, port 8472)
OV = {4789: ("198.19.0.1", "198.19.0.2", "2001:db8::1", "2001:db8::2"),
      8472: ("198.19.1.1", "198.19.1.2", "2001:db8:1::1", "2001:db8:1::2")}  # fmt: skip
VNI = {4789: 10, 8472: 11}

# (TOS, TTL, DF) of IPv4 pings and (traffic class, hop limit) of IPv6 ones; the size tells
# the cases apart on the wire
PINGS4 = [(0x00, 64, False), (0x01, 5, True), (0x02, 64, True), (0x03, 9, False),
          (0xB8, 64, True), (0xBB, 3, False), (0x2A, 200, True)]  # fmt: skip
PINGS6 = [(0x00, 64), (0xB9, 7), (0x03, 64), (0x22, 100)]
SETTINGS = {
    "inherit": (["--tos", "inherit", "--ttl", "inherit", "--df", "inherit"],
                ["tos", "inherit", "ttl", "inherit", "df", "inherit"]),
    "fixed": (["--tos", "40", "--ttl", "9", "--df", "set"],
              ["tos", "0x28", "ttl", "9", "df", "set"]),
    "default": ([], []),
}  # fmt: skip


def _hosts(topo: Topology, v6: bool) -> tuple[Host, Host, str, str, str]:
    a, b = topo.add_host("a"), topo.add_host("b")
    ua, ub = (UA6, UB6) if v6 else (UA, UB)
    plen = 64 if v6 else 24
    dev = topo.link(a, b, f"{ua}/{plen}", f"{ub}/{plen}")
    return a, b, dev, ua, ub


def _overlay(h: Host, dev: str, side: int) -> None:
    for port in OV:
        h.ip("addr", "add", f"{OV[port][side]}/24", "dev", dev if port == 4789 else "kvx")
        h.ip("addr", "add", f"{OV[port][2 + side]}/64", "dev", dev if port == 4789 else "kvx",
             "nodad")  # fmt: skip


def _ping(h: Host, dest: str, size: int, *opts: str) -> None:
    """One echo request of ``size`` payload bytes (whether a reply comes does not matter)."""
    h.sh("ping", "-c", "1", "-W", "1", "-s", str(size), *opts, dest, check=False)


def _outer_of(pkt: Ether) -> tuple[int, int, bool]:
    """The outer header's TOS / traffic class, TTL / hop limit and DF (the first IP layer:
    scapy also dissects the inner packet)."""
    outer = pkt.payload
    if isinstance(outer, IP):
        return outer.tos, outer.ttl, bool(outer.flags.DF)
    assert isinstance(outer, IPv6), pkt.summary()
    return outer.tc, outer.hlim, False


def _case_of(inner: Ether) -> str | None:
    if ARP in inner and inner[ARP].op == 1:
        return "arp"
    if IP in inner and ICMP in inner and inner[ICMP].type == 8:
        return f"ping4-{inner[IP].len}"
    if IPv6 in inner and inner[IPv6].nh == 58 and bytes(inner[IPv6].payload)[:1] == b"\x80":
        return f"ping6-{inner[IPv6].plen}"
    return None


@pytest.mark.parametrize(
    ("setting", "backend", "v6"),
    [
        ("inherit", "cffi", False),
        ("inherit", "python", False),
        ("fixed", "cffi", False),
        ("default", "cffi", False),
        ("inherit", "cffi", True),
        ("fixed", "python", True),
    ],
)
def test_outer_fields_as_the_kernel_sets_them(
    topo: Topology, tmp_path: Path, setting: str, backend: str, v6: bool
) -> None:
    ours, kernel = SETTINGS[setting]
    a, b, dev, ua, ub = _hosts(topo, v6)
    topo.kernel_vxlan(a, vni=11, dev=dev, dstport=8472, remote=ub, name="kvx", extra=kernel)
    topo.kernel_vxlan(b, vni=10, dev=dev, dstport=4789, remote=ua, name="vx0")
    topo.kernel_vxlan(b, vni=11, dev=dev, dstport=8472, remote=ua, name="kvx")
    v = Vxlanpy(topo, a, ["--vni", "10", "--local", ua, "--remote", ub, "--tap", "vx0", *ours],
                backend=backend)  # fmt: skip
    _overlay(a, "vx0", 0)
    _overlay(b, "vx0", 1)
    pcap = tmp_path / "b.pcap"
    with capture(topo, b, dev, pcap, "udp", "and", "src", ua):
        for port in OV:
            for k, (tos, ttl, df) in enumerate(PINGS4):
                pmtu = "do" if df else "dont"
                _ping(a, OV[port][1], 100 + k, "-Q", str(tos), "-t", str(ttl), "-M", pmtu)
            for k, (tc, hlim) in enumerate(PINGS6):
                _ping(a, OV[port][3], 100 + k, "-6", "-Q", str(tc), "-t", str(hlim))
    assert v.stop() == 0
    seen: dict[int, dict[str, set[tuple[int, int, bool]]]] = {4789: {}, 8472: {}}
    for pkt in rdpcap(str(pcap)):
        if UDP not in pkt or pkt[UDP].dport not in seen:
            continue
        case = _case_of(Ether(bytes(pkt[UDP].payload)[8:]))
        if case is not None:
            seen[pkt[UDP].dport].setdefault(case, set()).add(_outer_of(pkt))
    kernel_seen, ours_seen = seen[8472], seen[4789]
    want = {"arp"} | {f"ping4-{128 + k}" for k in range(len(PINGS4))}
    want |= {f"ping6-{108 + k}" for k in range(len(PINGS6))}
    assert want <= set(kernel_seen), sorted(kernel_seen)  # every case reached the wire
    assert ours_seen == kernel_seen
    # the settings took effect (on both): TOS 0xBB TTL 3 sent as 0xBA (CE as ECT(0)) and TTL 3
    # inherited, or with the fixed TOS 0x28 and TTL 9, or TOS 0 and the system's 64
    tos_ttl = {"inherit": (0xBA, 3), "fixed": (0x2A, 9), "default": (0x02, 64)}[setting]
    assert {f[:2] for f in kernel_seen["ping4-133"]} == {tos_ttl}, kernel_seen["ping4-133"]


# --- wire -> device: RFC 6040 ---------------------------------------------------------------

SENDER = r"""
import json, sys
from scapy.all import IP, IPv6, UDP, Ether, Raw, conf, send
from scapy.layers.vxlan import VXLAN
conf.verb = 0
a = json.loads(sys.argv[1])
for c in a["cases"]:
    if c["v6"]:
        inner = IPv6(src="2001:db8::9", dst="2001:db8::1", tc=c["inner"], hlim=9)
    else:
        inner = IP(src="198.19.0.9", dst="198.19.0.1", tos=c["inner"], ttl=9)
    frame = (Ether(src="02:00:00:00:00:09", dst="ff:ff:ff:ff:ff:ff") / inner
             / UDP(sport=7, dport=9) / Raw(c["tag"].encode()))
    for port, vni in a["to"]:
        outer = IPv6(src=a["src"], dst=a["dst"], tc=c["outer"]) if a["v6u"] else \
            IP(src=a["src"], dst=a["dst"], tos=c["outer"])
        send(outer / UDP(sport=50000, dport=port) / VXLAN(vni=vni, flags=0x08) / frame)
"""


def _delivered(pcap: Path) -> dict[str, tuple[int, bool]]:
    """tag -> (inner TOS / traffic class, checksum valid) of the frames captured."""
    out: dict[str, tuple[int, bool]] = {}
    for pkt in rdpcap(str(pcap)):
        if UDP not in pkt or pkt[UDP].dport != 9:
            continue
        tag = bytes(pkt[UDP].payload).decode(errors="replace")
        if IP in pkt:
            ip = pkt[IP]
            again = IP(bytes(ip))
            del again.chksum  # scapy computes it anew
            out[tag] = (ip.tos, IP(bytes(again)).chksum == ip.chksum)
        else:
            out[tag] = (pkt[IPv6].tc, True)
    return out


@pytest.mark.parametrize(("backend", "v6u"), [("cffi", False), ("python", False), ("cffi", True)])
def test_ecn_decapsulation_as_the_kernel_does(
    topo: Topology, tmp_path: Path, backend: str, v6u: bool
) -> None:
    a, b, dev, ua, ub = _hosts(topo, v6u)
    topo.kernel_vxlan(a, vni=11, dev=dev, dstport=8472, remote=ub, name="kvx")
    v = Vxlanpy(topo, a, ["--vni", "10", "--local", ua, "--remote", ub, "--tap", "vx0"],
                backend=backend)  # fmt: skip
    cases = [
        {"inner": 0xB8 | i, "outer": 0x20 | o, "v6": v6, "tag": f"{int(v6)}-{i}-{o}"}
        for v6, i, o in itertools.product((False, True), range(4), range(4))
    ]
    args = {"cases": cases, "to": [[4789, 10], [8472, 11]], "src": ub, "dst": ua, "v6u": v6u}
    p_ours, p_kernel = tmp_path / "vx0.pcap", tmp_path / "kvx.pcap"
    with capture(topo, a, "vx0", p_ours, "udp"), capture(topo, a, "kvx", p_kernel, "udp"):
        b.sh(sys.executable, "-c", SENDER, json.dumps(args), timeout=120)
    assert v.stop() == 0
    ours, kernel = _delivered(p_ours), _delivered(p_kernel)
    assert ours == kernel
    dropped = {c["tag"] for c in cases} - set(kernel)
    # RFC 6040: exactly outer CE over not-ECT is dropped (4 outer x 4 inner, IPv4 and IPv6)
    assert dropped == {"0-0-3", "1-0-3"}, sorted(dropped)
    assert all(ok for _tos, ok in ours.values())  # the rewritten IPv4 checksums are right
    assert ours["0-2-3"][0] == 0xBB and ours["0-2-1"][0] == 0xB9  # CE marked, ECT(1) carried
    seg = v.stats()["segments"]["10"]  # type: ignore[index]
    assert seg["drops"].get("ecn-error") == 2, seg
