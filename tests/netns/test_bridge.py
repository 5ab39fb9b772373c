"""Containers behind a Linux bridge: the TAP is a bridge port (docker-bridge style).

A kernel peer sends TCP as tunnel-GSO super-packets that arrive whole; written to the TAP as
one oversized frame, a bridge would drop it when forwarding (it is longer than the port's MTU).
vxlanpy writes such frames as GSO frames (virtio-net header), so the kernel segments them
where it must. Both directions, both backends, SHA-256 checked.
"""

from __future__ import annotations

import pytest
from conftest import Vxlanpy, ping, tcp_transfer

from vxlanpy.netns import Topology

MB = 1_000_000


@pytest.mark.parametrize("backend", ["cffi", "python"])
def test_kernel_peer_to_container_behind_bridge(topo: Topology, backend: str) -> None:
    a = topo.add_host("a")  # vxlanpy VTEP with bridge br0
    b = topo.add_host("b")  # kernel VTEP
    c = topo.add_host("c")  # a "container" on a's bridge
    dev = topo.link(a, b, "198.18.0.1/24", "198.18.0.2/24")
    a.ip("link", "add", "br0", "type", "bridge")
    a.ip("link", "set", "br0", "up")
    topo.run(
        ["ip", "link", "add", "cv0", "netns", a.ns, "type", "veth", "peer", "name", "eth0"]
        + ["netns", c.ns]
    )
    a.ip("link", "set", "cv0", "master", "br0")
    a.ip("link", "set", "cv0", "mtu", "1450", "up")
    c.ip("link", "set", "eth0", "mtu", "1450")
    c.ip("addr", "add", "198.19.0.10/24", "dev", "eth0")
    c.ip("link", "set", "eth0", "up")
    topo.kernel_vxlan(b, vni=120, dev=dev, remote="198.18.0.1", address="198.19.0.2/24")
    v = Vxlanpy(
        topo,
        a,
        ["--vni", "120", "--local", "198.18.0.1", "--remote", "198.18.0.2", "--tap", "vx0"]
        + ["--bridge", "br0"],
        backend=backend,
    )
    assert "master br0" in a.ip("-o", "link", "show", "vx0")
    ping(c, "198.19.0.2")
    ping(b, "198.19.0.10")
    tcp_transfer(b, c, "198.19.0.10", 20 * MB)
    tcp_transfer(c, b, "198.19.0.2", 20 * MB, port=5002)
    assert v.stop() == 0
    stats = v.stats()
    assert stats["tap_write_errors"] == {"vx0": 0}
