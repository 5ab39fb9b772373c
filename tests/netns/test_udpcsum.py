"""The outer UDP checksum policy (iproute2's ``noudpcsum``, ``udp6zerocsumtx``,
``udp6zerocsumrx``) against the kernel's vxlan, read off the wire with tshark.

IPv4 ``--noudpcsum``: every datagram vxlanpy sends has checksum 0x0000 (pings, and TCP whose
super-frames then leave by sendmmsg, or whole through tunnel GSO), and the kernel peer
delivers them (the data arrives intact). IPv6: a kernel peer with ``udp6zerocsumtx`` is
received with ``--udp6zerocsumrx`` and dropped without; vxlanpy's ``--udp6zerocsumtx`` puts
zeros on the wire that a kernel peer with ``udp6zerocsumrx`` takes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import Vxlanpy, ping, tcp_transfer
from test_outer_header import capture

from vxlanpy.io.tgso import probe
from vxlanpy.netns import Host, Topology, ensure_tools

MB = 1_000_000
UA, UB = "198.18.0.1", "198.18.0.2"
UA6, UB6 = "2001:2::1", "2001:2::2"


def checksums(pcap: Path, src: str) -> list[int]:
    """The outer UDP checksum of every VXLAN datagram from ``src`` in ``pcap`` (tshark)."""
    ensure_tools({"tshark": "tshark"})
    field = "ipv6.src" if ":" in src else "ip.src"
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-n", "-Y", f"{field} == {src} && vxlan", "-T", "fields"]
        + ["-e", "udp.checksum", "-o", "udp.check_checksum:FALSE"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    # an outer and, for a datagram carrying inner UDP, an inner checksum: the first is outer
    return [int(line.split(",")[0], 16) for line in out.split()]


def _pair(topo: Topology, v6: bool) -> tuple[Host, Host, str, str, str]:
    a, b = topo.add_host("a"), topo.add_host("b")
    ua, ub = (UA6, UB6) if v6 else (UA, UB)
    dev = topo.link(a, b, f"{ua}/{64 if v6 else 24}", f"{ub}/{64 if v6 else 24}")
    return a, b, dev, ua, ub


def _args(ua: str, ub: str, *extra: str) -> list[str]:
    return ["--vni", "7", "--local", ua, "--remote", ub, "--tap", "vx0"] + [
        "--address",
        "198.19.0.1/24",
        *extra,
    ]


@pytest.mark.parametrize("mode", ["datagrams", "tunnel-gso"])
def test_noudpcsum_puts_zero_on_the_wire(topo: Topology, tmp_path: Path, mode: str) -> None:
    a, b, dev, ua, ub = _pair(topo, False)
    topo.kernel_vxlan(b, vni=7, dev=dev, remote=ua, local=ub, address="198.19.0.2/24")
    extra = ["--noudpcsum"]
    if mode == "tunnel-gso":
        if probe() is not None:
            pytest.skip(f"this kernel has no UDP-tunnel GSO on TAPs: {probe()}")
        extra.append("--tunnel-gso")
    v = Vxlanpy(topo, a, _args(ua, ub, *extra))
    pcap = tmp_path / "b.pcap"
    with capture(topo, b, dev, pcap, "-s", "128", "udp", "port", "4789"):
        ping(a, "198.19.0.2")
        tcp_transfer(a, b, "198.19.0.2", 8 * MB)  # super-frames: not by UDP GSO
        tcp_transfer(b, a, "198.19.0.1", 2 * MB, port=5002)
    assert v.stop() == 0
    ours, theirs = checksums(pcap, ua), checksums(pcap, ub)
    # 8 MB: some 5,700 datagrams, or a few hundred super-packets sent whole (tunnel GSO)
    assert len(ours) > 100 and set(ours) == {0}, (len(ours), sorted(set(ours))[:5])
    assert theirs and 0 not in theirs  # the kernel's udpcsum, for contrast
    st = v.stats()
    assert st["losses"]["send"] == 0, st["socket_errors"]  # type: ignore[index]


@pytest.mark.parametrize("rx", [True, False], ids=["zerocsumrx", "no-zerocsumrx"])
def test_ipv6_zero_checksums_taken_only_with_udp6zerocsumrx(
    topo: Topology, tmp_path: Path, rx: bool
) -> None:
    a, b, dev, ua, ub = _pair(topo, True)
    topo.kernel_vxlan(
        b,
        vni=7,
        dev=dev,
        remote=ua,
        local=ub,
        address="198.19.0.2/24",
        extra=["udp6zerocsumtx", "udp6zerocsumrx"],
    )
    extra = ["--udp6zerocsumtx"] + (["--udp6zerocsumrx"] if rx else [])
    v = Vxlanpy(topo, a, _args(ua, ub, *extra))
    pcap = tmp_path / "b.pcap"
    with capture(topo, b, dev, pcap, "-s", "128", "udp", "port", "4789"):
        out = b.sh("ping", "-c", "5", "-i", "0.2", "-W", "1", "198.19.0.1", check=False)
    assert v.stop() == 0
    ours, theirs = checksums(pcap, ua), checksums(pcap, ub)
    assert len(theirs) >= 5 and set(theirs) == {0}, theirs  # the kernel's udp6zerocsumtx
    if rx:
        assert " 0% packet loss" in out, out
        assert ours and set(ours) == {0}, ours  # ours, taken by the kernel's udp6zerocsumrx
    else:  # the IPv6 socket drops them: nothing learned, no reply
        assert "100% packet loss" in out, out
        assert v.stats()["segments"]["7"]["rx_packets"] == 0  # type: ignore[index]
