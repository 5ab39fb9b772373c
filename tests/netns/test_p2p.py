"""Point to point: vxlanpy against the Linux kernel's vxlan (the reference peer), and vxlanpy
against itself, on ports 4789 and 8472, over IPv4 and IPv6 underlays; MTU with DF."""

from __future__ import annotations

import pytest
from conftest import Vxlanpy, ping, tcp_transfer

from vxlanpy.netns import Topology

MB = 1_000_000


def _pair(topo: Topology, v6: bool = False):  # type: ignore[no-untyped-def]
    a = topo.add_host("a")
    b = topo.add_host("b")
    if v6:
        ua, ub = "2001:2::1", "2001:2::2"
        dev = topo.link(a, b, f"{ua}/64", f"{ub}/64")
    else:
        ua, ub = "198.18.0.1", "198.18.0.2"
        dev = topo.link(a, b, f"{ua}/24", f"{ub}/24")
    return a, b, dev, ua, ub


@pytest.mark.parametrize(
    ("port", "backend", "offload", "sender"),
    [
        (4789, "cffi", True, True),
        (8472, "cffi", True, True),
        (4789, "cffi", True, False),
        (4789, "python", True, False),
        (4789, "cffi", False, True),
    ],
)
def test_vxlanpy_vs_kernel(
    topo: Topology, port: int, backend: str, offload: bool, sender: bool
) -> None:
    a, b, dev, ua, ub = _pair(topo)
    topo.kernel_vxlan(b, vni=120, dev=dev, dstport=port, remote=ua, address="198.19.0.2/24")
    v = Vxlanpy(
        topo,
        a,
        ["--vni", "120", "--dstport", str(port), "--local", ua, "--remote", ub]
        + ["--tap", "vx0", "--address", "198.19.0.1/24"]
        + ([] if offload else ["--no-offload"])
        + ([] if sender else ["--no-send-thread"])
        # the datagram path: super-frames cut here (test_tunnel_gso.py has them sent whole)
        + ["--tunnel-gso", "off"],
        backend=backend,
    )
    assert f"backend {backend}" in v.lines[0]
    ping(a, "198.19.0.2")
    ping(b, "198.19.0.1")
    tcp_transfer(a, b, "198.19.0.2", 20 * MB)
    tcp_transfer(b, a, "198.19.0.1", 20 * MB, port=5002)
    assert v.stop() == 0
    stats = v.stats()
    seg = stats["segments"]["120"]  # type: ignore[index]
    assert seg["rx_bytes"] > 20 * MB and seg["tx_bytes"] > 20 * MB  # both transfers went through us
    assert stats["checksums_completed"] > 0  # the kernel peer's partial checksums were fixed
    assert stats["gso_errors"] == 0
    # with offloads the TAP handed over TCP super-frames that vxlanpy cut; without, none
    assert (stats["gso_frames"] > 0) == offload
    assert stats["socket_errors"] == {}
    assert stats["fast_path"] == (backend == "cffi")  # hits forwarded in C on the C backend
    # the C sender thread sent the super-frames (device -> wire pipeline), when it runs
    assert stats["send_thread"] == sender
    assert (stats["send_thread_frames"] > 0) == (sender and offload)
    assert stats["send_thread_frames"] <= stats["gso_frames"]
    assert a.sh("ip", "-o", "link", "show").count("vx0") == 0  # TAP removed on exit


@pytest.mark.parametrize(("port", "gro"), [(4789, True), (8472, False)])
def test_vxlanpy_vs_vxlanpy(topo: Topology, port: int, gro: bool) -> None:
    a, b, dev, ua, ub = _pair(topo)
    common = ["--vni", "120", "--dstport", str(port), "--tap", "vx0"]
    common += [] if gro else ["--no-gro"]
    # a cuts its super-frames (with tunnel GSO, the default, they would reach b whole)
    va = Vxlanpy(topo, a, [*common, "--local", ua, "--remote", ub, "--address", "198.19.0.1/24",
                           "--tunnel-gso", "off"])  # fmt: skip
    vb = Vxlanpy(topo, b, [*common, "--local", ub, "--remote", ua, "--address", "198.19.0.2/24"])
    ping(a, "198.19.0.2")
    ping(b, "198.19.0.1")
    tcp_transfer(a, b, "198.19.0.2", 20 * MB)
    assert va.stop() == 0 and vb.stop() == 0
    stats = vb.stats()
    assert stats["udp_gro"] == gro
    received = stats["gro"]  # type: ignore[index]
    # a's UDP GSO sends of cut super-frames arrive whole at b's UDP_GRO socket; most are one
    # TCP stream's consecutive segments, coalesced back into a super-frame for b's TAP
    if gro:
        assert received["coalesced"] > received["split"], received
        assert received["coalesced"] + received["split"] == received["receives"]
    else:
        assert received == dict.fromkeys(received, 0)
    assert stats["socket_errors"] == {} and received["pending_dropped"] == 0


def test_ipv6_underlay(topo: Topology) -> None:
    a, b, dev, ua, ub = _pair(topo, v6=True)
    topo.kernel_vxlan(b, vni=7, dev=dev, remote=ua, local=ub, address="198.19.0.2/24", name="vx0")
    v = Vxlanpy(
        topo,
        a,
        ["--vni", "7", "--local", ua, "--remote", ub, "--tap", "vx0"]
        + ["--address", "198.19.0.1/24"],
    )
    assert a.sh("cat", "/sys/class/net/vx0/mtu").strip() == "1430"  # 1500 - 70
    ping(a, "198.19.0.2")
    ping(b, "198.19.0.1")
    tcp_transfer(a, b, "198.19.0.2", 5 * MB)
    assert v.stop() == 0


def test_mtu_full_size_with_df(topo: Topology) -> None:
    a, b, dev, ua, ub = _pair(topo)
    topo.kernel_vxlan(b, vni=120, dev=dev, remote=ua, address="198.19.0.2/24")
    v = Vxlanpy(
        topo,
        a,
        ["--vni", "120", "--local", ua, "--remote", ub, "--tap", "vx0"]
        + ["--address", "198.19.0.1/24"],
    )
    mtu = int(a.sh("cat", "/sys/class/net/vx0/mtu"))
    assert mtu == 1500 - 50
    payload = str(mtu - 28)  # IPv4 20 + ICMP 8: a packet of exactly the overlay MTU
    ping(a, "198.19.0.2", extra=("-M", "do", "-s", payload))
    ping(b, "198.19.0.1", extra=("-M", "do", "-s", payload))
    # one byte more does not fit with DF: the sender's stack refuses it
    out = a.sh("ping", "-c", "1", "-M", "do", "-s", str(mtu - 27), "198.19.0.2", check=False)
    assert "message too long" in out.lower() or "100% packet loss" in out
    assert v.stop() == 0


def test_fast_path_falls_back_when_gso_cannot_go(topo: Topology) -> None:
    """A TAP MTU above the underlay's (DF unset): runs of equal-sized datagrams cannot leave as
    one UDP GSO send (EMSGSIZE), so the C path sends them one by one and the kernel fragments
    them, as the Python path does."""
    a, b, _dev, ua, ub = _pair(topo)
    peer = Vxlanpy(  # the kernel refuses a vxlan MTU above its underlay's: vxlanpy on b too
        topo,
        b,
        ["--vni", "120", "--local", ub, "--remote", ua, "--tap", "vx0"]
        + ["--address", "198.19.0.2/24", "--mtu", "4000"],
    )
    v = Vxlanpy(
        topo,
        a,
        ["--vni", "120", "--local", ua, "--remote", ub, "--tap", "vx0"]
        + ["--address", "198.19.0.1/24", "--mtu", "4000"],
    )
    ping(a, "198.19.0.2")
    out = a.sh("ping", "-c", "300", "-i", "0", "-s", "3000", "-W", "2", "198.19.0.2", check=False)
    assert " 0% packet loss" in out, out[-300:]
    assert v.stop() == 0 and peer.stop() == 0
    stats = v.stats()
    assert stats["fast_path"] is True
    assert stats["segments"]["120"]["tx_packets"] >= 300  # type: ignore[index]
    assert "EMSGSIZE" not in stats["socket_errors"]  # type: ignore[operator]
