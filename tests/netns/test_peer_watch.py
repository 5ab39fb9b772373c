"""The peer watch against real peers: a kernel VTEP with ``noudpcsum`` (zero checksums, as an
RFC 7348 or Open vSwitch peer sends) is warned about once however many packets it sends, a
kernel VTEP with vxlanpy's own settings never; crafted datagrams with reserved header bits
warn once about their sender, so do fragmented outer packets; the warning is an event
(``events``) and a log line; ``--no-peer-watch`` or matching settings: none."""

from __future__ import annotations

import json
import socket
import sys

from conftest import Vxlanpy, ping

from vxlanpy.netns import Topology, wait_for

UA, UB, UC = "198.18.0.1", "198.18.0.2", "198.18.0.3"

SEND_RESERVED = """
import sys
from scapy.all import IP, UDP, Ether, Raw, send
from scapy.layers.vxlan import VXLAN
inner = Ether(src="02:00:00:00:0c:01", dst="ff:ff:ff:ff:ff:ff") / Raw(b"x" * 50)
p = IP(src=sys.argv[1], dst=sys.argv[2]) / UDP(sport=50001, dport=4789) / VXLAN(
    flags=0x0C, vni=7) / inner
send(p, count=int(sys.argv[3]), verbose=False)
"""


def test_mismatching_peer_warned_once_matching_never(topo: Topology) -> None:
    a, b, c = topo.add_host("a"), topo.add_host("b"), topo.add_host("c")
    dev = topo.switch([a, b, c], [f"{UA}/24", f"{UB}/24", f"{UC}/24"])
    # b: the kernel's noudpcsum; c: the kernel's defaults (udpcsum, as vxlanpy)
    topo.kernel_vxlan(b, vni=7, dev=dev, remote=UA, address="198.19.0.2/24",
                      extra=["noudpcsum"])  # fmt: skip
    topo.kernel_vxlan(c, vni=7, dev=dev, remote=UA, address="198.19.0.3/24")
    v = Vxlanpy(topo, a, ["--vni", "7", "--local", UA, "--remote", UB, "--remote", UC] + [
        "--tap", "vx0", "--address", "198.19.0.1/24", "-v",
    ])  # fmt: skip
    for _ in range(3):
        ping(a, "198.19.0.2", 5)
        ping(a, "198.19.0.3", 5)
        ping(b, "198.19.0.1", 3)
    assert wait_for(lambda: v.events("mismatch"), 5), "\n".join(v.lines[-20:])
    # crafted: c now sets reserved bits (an extension vxlanpy does not speak)
    c.sh(sys.executable, "-c", SEND_RESERVED, UC, UA, "10")
    assert wait_for(lambda: len(v.events("mismatch")) >= 2, 5), "\n".join(v.lines[-20:])
    ping(a, "198.19.0.2", 3)
    assert v.stop() == 0
    evs = v.events("mismatch")
    assert [(e["remote"], e["kinds"]) for e in evs] == [
        (UB, ("zero-checksum",)),
        (UC, ("reserved-bits",)),
    ], evs
    warnings = [line for line in v.lines if "expects other settings" in line]
    assert len(warnings) == 2 and UB in warnings[0] and "--noudpcsum" in warnings[0], warnings


def test_watch_visible_in_events_and_off_with_the_flag(topo: Topology) -> None:
    a, b = topo.add_host("a"), topo.add_host("b")
    # b sends nothing on its own (IPv6 router solicitations, MLD reports), so that its first
    # datagram, and with it the one warning, comes after the events client below subscribed
    b.no_ipv6()
    dev = topo.link(a, b, f"{UA}/24", f"{UB}/24")
    topo.kernel_vxlan(b, vni=7, dev=dev, remote=UA, address="198.19.0.2/24",
                      extra=["noudpcsum"])  # fmt: skip
    sock = f"/run/vxlanpy/test-pw-{topo.tag}.sock"
    args = ["--vni", "7", "--local", UA, "--remote", UB, "--tap", "vx0"]
    args += ["--address", "198.19.0.1/24", "--control", sock]
    v = Vxlanpy(topo, a, args)
    with socket.socket(socket.AF_UNIX) as s:  # an events client, subscribed before the ping
        s.settimeout(10)
        s.connect(sock)
        f = s.makefile("rwb")
        f.write(b'{"cmd": "events"}\n')
        f.flush()
        assert json.loads(f.readline()) == {"ok": True}
        ping(a, "198.19.0.2", 3)
        evs: list[dict[str, object]] = []
        while len(evs) < 10 and not any(e["event"] == "mismatch" for e in evs):
            evs.append(json.loads(f.readline()))  # learned, mismatch, ...: in any order
    got = [e for e in evs if e["event"] == "mismatch"]
    assert len(got) == 1 and got[0]["remote"] == UB, evs
    assert got[0]["kinds"] == ["zero-checksum"], got
    assert v.stop() == 0
    # --no-peer-watch (and a matching setting: --noudpcsum): nothing
    for extra in (["--no-peer-watch"], ["--noudpcsum"]):
        w = Vxlanpy(topo, a, [*args[:-2], "-v", *extra])
        ping(a, "198.19.0.2", 5)
        assert w.stop() == 0
        assert w.events("mismatch") == [], w.lines


def test_fragmenting_peer_warned(topo: Topology) -> None:
    """A kernel peer whose underlay MTU was lowered under its vxlan device (1450 on 1400): its
    larger frames leave as fragmented outer packets (DF unset), which the watch sees before
    reassembly."""
    a, b = topo.add_host("a"), topo.add_host("b")
    dev = topo.link(a, b, f"{UA}/24", f"{UB}/24")
    topo.kernel_vxlan(b, vni=7, dev=dev, remote=UA, address="198.19.0.2/24")
    b.ip("link", "set", dev, "mtu", "1400")
    v = Vxlanpy(topo, a, ["--vni", "7", "--local", UA, "--remote", UB, "--tap", "vx0"] + [
        "--address", "198.19.0.1/24", "-v",
    ])  # fmt: skip
    ping(b, "198.19.0.1", 3)  # small: no fragments, nothing to say
    assert v.events("mismatch") == []
    b.sh("ping", "-c", "3", "-i", "0.2", "-W", "1", "-s", "1460", "-M", "dont", "198.19.0.1",
         check=False)  # fmt: skip
    assert wait_for(lambda: v.events("mismatch"), 5), v.lines[-10:]
    assert v.stop() == 0
    (ev,) = v.events("mismatch")
    assert ev["remote"] == UB and ev["kinds"] == ("fragments",), ev
