"""Open vSwitch's userspace datapath as a second peer (vxlanpy/ovs.py), over a direct veth.

OVS (``ovs-vswitchd --disable-system``, netdev bridges, a vxlan port) runs in host b with its
own run, db and log directories; vxlanpy in host a. With the setting the docs name (zero
outer UDP checksums: ``--noudpcsum``, or ``--profile ovs``, which also sets
``udp6zerocsumtx`` for an IPv6 underlay), pings, 8 MB of TCP each way with equal SHA-256 and
a DF ping at the MTU cross both ways, over IPv4 and IPv6, and OVS drops nothing. Without it,
OVS drops every datagram vxlanpy sends (``datapath_drop_tunnel_pop_error``): it reads the raw
bytes off the veth, where a Linux UDP socket's checksum is still partial.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Vxlanpy, ping, tcp_transfer

from vxlanpy.io.tgso import probe
from vxlanpy.netns import Host, Topology, wait_for
from vxlanpy.ovs import OvsVtep, ensure_ovs

MB = 1_000_000
U4 = ("198.18.0.1", "198.18.0.2", 24)
U6 = ("2001:2::1", "2001:2::2", 64)
OA, OB = "198.19.0.1", "198.19.0.2"


@pytest.fixture
def workdir() -> Iterator[Path]:
    ensure_ovs()
    d = Path(tempfile.mkdtemp(prefix="vxp-ovs-"))  # short: OVS puts unix sockets in it
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _pair(
    topo: Topology, workdir: Path, v6: bool, *flags: str, tx_off: bool = False
) -> tuple[Host, Host, OvsVtep, Vxlanpy]:
    ua, ub, plen = U6 if v6 else U4
    a, b = topo.add_host("a"), topo.add_host("b")
    dev = topo.link(a, b, f"{ua}/{plen}", f"{ub}/{plen}")
    if tx_off:
        a.sh("ethtool", "-K", dev, "tx", "off")
    ovs = OvsVtep(b, workdir, dev=dev, local=ub, plen=plen, remote=ua, vni=7, address=f"{OB}/24")
    v = Vxlanpy(topo, a, ["--vni", "7", "--local", ua, "--remote", ub, "--tap", "vx0"] + [
        "--address", f"{OA}/24", *flags,
    ])  # fmt: skip
    return a, b, ovs, v


def _mtu(h: Host, dev: str) -> int:
    return int(h.sh("cat", f"/sys/class/net/{dev}/mtu"))


@pytest.mark.parametrize(
    ("v6", "flags"),
    [(False, ["--profile", "ovs"]), (False, ["--noudpcsum"]), (True, ["--profile", "ovs"])],
    ids=["ipv4-profile-ovs", "ipv4-noudpcsum", "ipv6-profile-ovs"],
)
def test_ovs_peer(topo: Topology, workdir: Path, v6: bool, flags: list[str]) -> None:
    # Tunnel GSO (the default, which --profile ovs leaves out) hands super-frames to the veth
    # whole, and OVS would read 64 KiB packets off it, as it would the kernel's vxlan's: with
    # tx offloads off on a's veth the kernel cuts them before it, as for a NIC without tunnel
    # segmentation (and vxlanpy's own super-frames are sent whole all the same)
    tx_off = "--profile" not in flags
    a, b, ovs, v = _pair(topo, workdir, v6, *flags, "-v", tx_off=tx_off)
    ping(a, OB)
    ping(b, OA)
    tcp_transfer(a, b, OB, 8 * MB)
    tcp_transfer(b, a, OA, 8 * MB, port=5002)
    mtu = _mtu(a, "vx0")
    assert mtu == _mtu(b, "br-int") == 1500 - (70 if v6 else 50)
    # the largest packet the overlay takes, DF set, each way
    ping(a, OB, 3, ("-M", "do", "-s", str(mtu - 28)))
    ping(b, OA, 3, ("-M", "do", "-s", str(mtu - 28)))
    out = a.sh("ping", "-c", "1", "-M", "do", "-s", str(mtu - 27), OB, check=False)
    assert "0 received, +1 errors" in out, out  # one byte more: refused locally (EMSGSIZE)
    assert ovs.drops() == {}, ovs.drops()
    assert v.stop() == 0
    assert v.stats()["losses"]["total"] == 0, v.stats()["losses"]  # type: ignore[index]
    assert v.events("mismatch") == []  # with the setting, OVS is a matching peer
    tg = v.stats()["tunnel_gso"]
    assert isinstance(tg, dict)
    if tx_off and probe() is None:
        assert tg["why_not"] is None and tg["frames"] > 0, tg
    elif not tx_off:
        assert tg["why_not"] == "profile ovs: Open vSwitch's userspace datapath takes datagrams"


def test_ovs_drops_partial_checksums_without_the_setting(topo: Topology, workdir: Path) -> None:
    a, b, ovs, v = _pair(topo, workdir, False, "-v")  # vxlanpy's defaults: udpcsum, on a veth
    out = a.sh("ping", "-c", "3", "-i", "0.2", "-W", "1", OB, check=False)
    assert "100% packet loss" in out, out
    assert wait_for(lambda: ovs.drops().get("datapath_drop_tunnel_pop_error", 0) >= 3, 5), (
        ovs.drops()
    )
    # OVS's zero checksums reach vxlanpy, whose replies OVS drops: the peer watch says why
    out = b.sh("ping", "-c", "3", "-i", "0.2", "-W", "1", OA, check=False)
    assert "100% packet loss" in out, out
    assert wait_for(lambda: v.events("mismatch"), 5), v.lines[-10:]
    assert v.stop() == 0
    (ev,) = v.events("mismatch")
    assert ev["remote"] == U4[1] and ev["kinds"] == ("zero-checksum",), ev
    assert "--profile ovs" in str(ev["hint"])
