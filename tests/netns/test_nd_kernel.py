"""The IPv6 ND proxy against the kernel's vxlan, in namespaces.

Host a runs vxlanpy with ``--proxy`` and a neighbour entry for host b's overlay IPv6 address
(``--neigh``, or ``neigh add`` over the control socket at run time); host b is a kernel
vxlan device that knows a's address statically (so that it never solicits either). A
``ping -6`` across the overlay must succeed while a capture of b's underlay shows
the echo requests in VXLAN and not one neighbour solicitation; an unknown target is an L3
miss, and nothing for it reaches the wire. Without ``--proxy`` the same capture sees the
solicitations (the capture could see them). A solicitation sent to vxlanpy's TAP and to a
kernel vxlan device with ``proxy`` and the same neighbour entry is answered with the same
bytes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from conftest import Vxlanpy, capture, ping
from scapy.compat import raw
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import rdpcap

from vxlanpy.netns import Host, Topology, wait_for

UA, UB = "198.18.0.1", "198.18.0.2"
A6, B6, UNKNOWN6 = "2001:db8::1", "2001:db8::2", "2001:db8::99"
MAC_A, MAC_B = "02:00:c6:12:00:01", "02:00:c6:12:00:02"
VNI = 10


def _inner(path: Path) -> list[Ether]:
    """The inner frames of the VXLAN datagrams in the capture."""
    return [p[VXLAN].payload for p in rdpcap(str(path)) if VXLAN in p]


def _solicitations(frames: list[Ether], target: str | None = None) -> list[Ether]:
    return [f for f in frames if ICMPv6ND_NS in f and target in (None, f[ICMPv6ND_NS].tgt)]


def _pair(
    topo: Topology, proxy: bool, backend: str, control: Path | None = None
) -> tuple[Host, Host, str, Vxlanpy]:
    """vxlanpy on a, the kernel on b; with ``control``, the neighbour entry is added at run
    time over that control socket (``neigh add``) instead of ``--neigh``."""
    a, b = topo.add_host("a"), topo.add_host("b")
    dev = topo.link(a, b, f"{UA}/24", f"{UB}/24")
    topo.kernel_vxlan(b, vni=VNI, dev=dev, remote=UA, name="vx0", address=f"{B6}/64")
    b.ip("link", "set", "vx0", "address", MAC_B)
    b.ip("-6", "neigh", "add", A6, "lladdr", MAC_A, "dev", "vx0", "nud", "permanent")
    args = ["--vni", str(VNI), "--local", UA, "--remote", UB, "--tap", "vx0", "--mac", MAC_A]
    if control is not None:
        args += ["--control", str(control)]
    if proxy:
        args += ["--proxy"] + ([] if control else ["--neigh", f"{B6}={MAC_B}"])
    v = Vxlanpy(topo, a, [*args, "-v"], backend=backend)
    if proxy and control is not None:
        cli = [sys.executable, "-m", "vxlanpy.cli", "neigh", "add", B6, "lladdr", MAC_B]
        a.sh(*cli, "--control", str(control))
        shown = a.sh(
            sys.executable, "-m", "vxlanpy.cli", "neigh", "show", "--control", str(control)
        )
        assert shown.split() == [B6, "dev", "vx0", "lladdr", MAC_B, "PERMANENT"], shown
    a.ip("addr", "add", f"{A6}/64", "dev", "vx0", "nodad")
    return a, b, dev, v


@pytest.mark.parametrize(("backend", "control"), [("cffi", False), ("python", True)])
def test_ping6_resolves_with_no_solicitation_on_the_wire(
    topo: Topology, tmp_path: Path, backend: str, control: bool
) -> None:
    sock = tmp_path / "ctl.sock" if control else None
    a, b, dev, v = _pair(topo, proxy=True, backend=backend, control=sock)
    pcap = tmp_path / "underlay.pcap"
    with capture(topo, b, dev, pcap, "udp", "port", "4789", "and", "src", UA):
        ping(a, B6, count=3, extra=("-6",))
        a.sh("ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", UNKNOWN6, check=False)
    neigh = a.ip("-6", "neigh", "show", B6, "dev", "vx0")
    assert MAC_B in neigh, neigh  # resolved, by the proxy's advertisement
    assert "lladdr" not in a.ip("-6", "neigh", "show", UNKNOWN6, "dev", "vx0")
    assert v.stop() == 0
    inner = _inner(pcap)
    echoes = [f for f in inner if ICMPv6EchoRequest in f and f[IPv6].dst == B6]
    assert len(echoes) >= 3, [f.summary() for f in inner]  # the capture sees the overlay
    assert _solicitations(inner) == [], [f.summary() for f in inner]
    assert not [f for f in inner if IPv6 in f and f[IPv6].dst.endswith("ff00:99")]
    seg = v.stats()["segments"][str(VNI)]  # type: ignore[index]
    assert seg["nd_proxied"] >= 1 and seg["l3_misses"] >= 1, seg
    assert seg["drops"].get("l3-miss", 0) >= 1, seg
    assert any(e["ip"] == UNKNOWN6 for e in v.events("l3miss")), v.lines


def test_without_proxy_the_solicitations_are_flooded(topo: Topology, tmp_path: Path) -> None:
    """The control: the same capture sees the solicitations when vxlanpy does not proxy."""
    a, b, dev, v = _pair(topo, proxy=False, backend="cffi")
    pcap = tmp_path / "underlay.pcap"
    with capture(topo, b, dev, pcap, "udp", "port", "4789", "and", "src", UA):
        ping(a, B6, count=2, extra=("-6",))
        a.sh("ping", "-6", "-c", "1", "-W", "1", UNKNOWN6, check=False)
    assert v.stop() == 0
    inner = _inner(pcap)
    assert _solicitations(inner, B6) and _solicitations(inner, UNKNOWN6), [
        f.summary() for f in inner
    ]
    assert v.stats()["segments"][str(VNI)]["nd_proxied"] == 0  # type: ignore[index]


def _send(h: Host, dev: str, frame: bytes) -> None:
    code = f"from scapy.all import Ether, sendp; sendp(Ether({frame!r}), iface={dev!r}, verbose=0)"
    h.sh(sys.executable, "-c", code)


def _advertisements(path: Path) -> list[bytes]:
    return [raw(p) for p in rdpcap(str(path)) if ICMPv6ND_NA in p and p[ICMPv6ND_NA].tgt == B6]


@pytest.mark.parametrize("backend", ["cffi", "python"])
def test_advertisement_is_the_kernels(topo: Topology, tmp_path: Path, backend: str) -> None:
    """One solicitation, on vxlanpy's TAP and on a kernel vxlan device with ``proxy`` and the
    same entry, in one namespace: the two advertisements are the same bytes. A DAD one gets
    none from vxlanpy (the kernel's goes to ``::``, and the host answers it with an ICMPv6
    error)."""
    a, b = topo.add_host("a"), topo.add_host("b")
    dev = topo.link(a, b, f"{UA}/24", f"{UB}/24")
    topo.kernel_vxlan(a, vni=11, dev=dev, dstport=8472, remote=UB, name="kvx", proxy=True)
    v = Vxlanpy(topo, a, ["--vni", str(VNI), "--local", UA, "--remote", UB, "--tap", "vx0",
                          "--proxy", "--neigh", f"{B6}={MAC_B}"], backend=backend)  # fmt: skip
    a.ip("-6", "neigh", "add", B6, "lladdr", MAC_B, "dev", "kvx", "nud", "permanent")
    asker = "02:00:c6:12:00:0a"
    ns = Ether(src=asker, dst="33:33:ff:00:00:02")
    ns = ns / IPv6(src=A6, dst="ff02::1:ff00:2", hlim=255, tc=0x48) / ICMPv6ND_NS(tgt=B6)
    ns = ns / ICMPv6NDOptSrcLLAddr(lladdr=asker)
    dad = Ether(src=asker, dst="33:33:ff:00:00:02")
    dad = dad / IPv6(src="::", dst="ff02::1:ff00:2", hlim=255) / ICMPv6ND_NS(tgt=B6)
    got = {}
    for name in ("vx0", "kvx"):
        pcap = tmp_path / f"{name}.pcap"
        with capture(topo, a, name, pcap, "icmp6"):
            _send(a, name, raw(ns))
            assert wait_for(lambda p=pcap: len(_advertisements(p)) >= 1, 5)  # type: ignore[misc]
        got[name] = _advertisements(pcap)
    assert len(got["vx0"]) == 1 and got["vx0"] == got["kvx"], got
    pcap = tmp_path / "dad.pcap"
    with capture(topo, a, "vx0", pcap, "icmp6"):
        _send(a, "vx0", raw(dad))
        time.sleep(0.5)
    assert _advertisements(pcap) == []
    assert v.stop() == 0
    seg = v.stats()["segments"][str(VNI)]  # type: ignore[index]
    assert seg["nd_proxied"] == 1 and seg["drops"].get("nd-dad", 0) >= 1, seg
