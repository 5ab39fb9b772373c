"""Topologies beyond point to point, each against the Linux kernel's vxlan as the reference:
flood-and-learn with three VTEPs (head-end replication), flannel style (static tables, ARP
proxy, no learning), FDB ageing, a multicast underlay, and a hostile wire.

Every overlay has IPv6 disabled (``_host``): the IPv6 autoconfiguration a fresh device starts
(router solicitations, MLD reports, DAD) is broadcast/multicast traffic that legitimately
floods, and would blur the counters and learning timelines these tests measure.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

from conftest import Vxlanpy

from vxlanpy.netns import Host, Topology, wait_for

VNI = 120
A_UL, B_UL, C_UL = "198.18.0.1", "198.18.0.2", "198.18.0.3"
A_OV, B_OV, C_OV = "198.19.0.1", "198.19.0.2", "198.19.0.3"
ZERO = "00:00:00:00:00:00"


def _host(topo: Topology, name: str) -> Host:
    h = topo.add_host(name)
    h.no_ipv6()
    return h


def _counter(h: Host, dev: str, name: str) -> int:
    return int(h.sh("cat", f"/sys/class/net/{dev}/statistics/{name}"))


def _mac(h: Host, dev: str) -> str:
    return h.sh("cat", f"/sys/class/net/{dev}/address").strip()


def _ping(h: Host, dest: str, count: int = 3, interval: float = 0.05) -> str:
    """``count`` pings, all answered (root may use short intervals); bounded by ``-w``."""
    deadline = str(int(count * interval + 5))
    out = h.sh(
        "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", "-w", deadline, dest,
        check=False,
    )  # fmt: skip
    assert f"{count} packets transmitted, {count} received" in out, out
    return out


def _vxlanpy(topo: Topology, h: Host, *args: str) -> Vxlanpy:
    return Vxlanpy(topo, h, ["--vni", str(VNI), "--tap", "vx0", "--address", f"{A_OV}/24", *args])


def _segment(stats: dict[str, object]) -> dict[str, object]:
    return stats["segments"][str(VNI)]  # type: ignore[index,no-any-return]


# --- 1. flood and learn, three VTEPs, head-end replication ---------------------------------------


def test_flood_and_learn_three_vteps(topo: Topology) -> None:
    a, b, c = (_host(topo, n) for n in "abc")
    dev = topo.switch([a, b, c], [f"{A_UL}/24", f"{B_UL}/24", f"{C_UL}/24"])
    for h, ov, others in ((b, B_OV, (A_UL, C_UL)), (c, C_OV, (A_UL, B_UL))):
        topo.kernel_vxlan(h, vni=VNI, dev=dev, address=f"{ov}/24")  # no remote: HER list below
        for other in others:
            h.sh("bridge", "fdb", "append", ZERO, "dev", "vx0", "dst", other)
    v = _vxlanpy(topo, a, "--local", A_UL, "--remote", B_UL, "--remote", C_UL, "-v")
    a_mac, b_mac = _mac(a, "vx0"), _mac(b, "vx0")

    c_rx0 = _counter(c, "vx0", "rx_packets")
    _ping(a, B_OV, count=1)  # first contact: ARP broadcast, replicated to b and c
    # c got the broadcast straight from a (head-end replication by vxlanpy, not relayed by b)
    assert wait_for(lambda: _counter(c, "vx0", "rx_packets") > c_rx0, 3)
    for h in (b, c):  # both kernels learned a's MAC from that broadcast, behind a's address
        fdb = h.sh("bridge", "fdb", "show", "dev", "vx0")
        assert any(a_mac in ln and f"dst {A_UL}" in ln for ln in fdb.splitlines()), (h.name, fdb)
    # vxlanpy learned b's MAC from b's (unicast) ARP reply
    assert v.wait_line("'event': 'learned'", 3), v.lines
    learned = v.events("learned")
    assert {"vni": VNI, "mac": b_mac, "remote": B_UL} in [
        {k: e[k] for k in ("vni", "mac", "remote")} for e in learned
    ], learned

    # now unicast: a burst of pings never reaches c. c's vx0 may still see up to 2 frames: a
    # neighbour entry that goes stale can be re-resolved with a broadcast ARP request (normally
    # the kernel probes unicast first, and with IPv6 off there is no other BUM traffic).
    c_rx1 = _counter(c, "vx0", "rx_packets")
    _ping(a, B_OV, count=20, interval=0.02)
    time.sleep(0.3)  # let any straggler arrive before reading c's counter
    c_rx2 = _counter(c, "vx0", "rx_packets")
    assert c_rx1 - c_rx0 >= 1
    assert c_rx2 - c_rx1 <= 2, (c_rx1, c_rx2)

    assert v.stop() == 0
    seg = _segment(v.stats())
    assert seg["l2_misses"] == 0, seg  # every unicast frame hit the learned entry
    assert seg["floods"] >= 1 and seg["learned"] >= 1, seg
    assert seg["rx_packets"] >= 22, seg  # the ARP reply + 21 echo replies, all delivered


# --- 2. flannel style: static tables, proxy ARP, no learning -------------------------------------


def test_flannel_style_static_no_arp_on_wire(topo: Topology, tmp_path: Path) -> None:
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.layers.l2 import ARP, Ether
    from scapy.layers.vxlan import VXLAN
    from scapy.utils import rdpcap

    a_mac, b_mac = "02:00:5e:10:00:01", "02:00:5e:10:00:02"
    a, b = _host(topo, "a"), _host(topo, "b")
    dev = topo.link(a, b, f"{A_UL}/24", f"{B_UL}/24")
    topo.kernel_vxlan(b, vni=VNI, dev=dev, address=f"{B_OV}/24", learning=False, proxy=True)
    b.ip("link", "set", "vx0", "address", b_mac)
    b.sh("bridge", "fdb", "append", a_mac, "dev", "vx0", "dst", A_UL)
    b.ip("neigh", "add", A_OV, "lladdr", a_mac, "dev", "vx0", "nud", "permanent")

    pcap = tmp_path / "a.pcap"
    log = tmp_path / "tcpdump.log"
    with open(log, "wb") as errf:
        dump = a.popen(
            # exactly the 20 ICMP frames are expected: -c makes tcpdump exit (flushed) after
            # them; --immediate-mode hands each packet over at once instead of per ring block
            ["tcpdump", "-i", dev, "-n", "--immediate-mode", "-U", "-c", "20", "-w", str(pcap)]
            + ["udp", "port", "4789"],
            stdout=errf,
            stderr=errf,
        )
    assert wait_for(lambda: b"listening on" in log.read_bytes() or dump.poll() is not None, 10)
    assert dump.poll() is None, log.read_text()

    v = _vxlanpy(
        topo, a, "--local", A_UL, "--mac", a_mac, "--no-learning", "--proxy",
        "--fdb", f"{b_mac}={B_UL}", "--neigh", f"{B_OV}={b_mac}",
    )  # fmt: skip
    assert _mac(a, "vx0") == a_mac
    _ping(a, B_OV, count=5)
    _ping(b, A_OV, count=5)
    wait_for(lambda: dump.poll() is not None, 5)  # if more than 20 came, they are not caught
    topo.stop(dump)
    assert v.stop() == 0

    icmp: Counter[tuple[str, str, int]] = Counter()
    arp_from_a = arp_from_b = 0
    for pkt in rdpcap(str(pcap)):
        if UDP not in pkt or pkt[UDP].dport != 4789:
            continue
        raw = bytes(pkt[UDP].payload)
        vx = VXLAN(raw[:8])
        assert vx.flags & 0x08 and vx.vni == VNI, raw[:8].hex()
        inner = Ether(raw[8:])
        if ARP in inner:
            if pkt[IP].src == A_UL:
                arp_from_a += 1
            else:
                arp_from_b += 1
        elif ICMP in inner:
            icmp[(inner[IP].src, inner[IP].dst, inner[ICMP].type)] += 1
    assert arp_from_a == 0  # vxlanpy answered every ARP request itself
    assert arp_from_b == 0  # (and the kernel peer, with a permanent neighbour, sent none)
    # both directions on the wire: a's echo requests and b's replies, and the other way round
    assert icmp[(A_OV, B_OV, 8)] == 5 and icmp[(B_OV, A_OV, 0)] == 5, icmp
    assert icmp[(B_OV, A_OV, 8)] == 5 and icmp[(A_OV, B_OV, 0)] == 5, icmp

    seg = _segment(v.stats())
    assert seg["arp_proxied"] >= 1, seg
    assert seg["learned"] == 0 and seg["floods"] == 0 and seg["l3_misses"] == 0, seg


# --- 3. ageing -----------------------------------------------------------------------------------


def test_learned_entry_ages_out(topo: Topology) -> None:
    a, b = _host(topo, "a"), _host(topo, "b")
    dev = topo.link(a, b, f"{A_UL}/24", f"{B_UL}/24")
    topo.kernel_vxlan(b, vni=VNI, dev=dev, remote=A_UL, address=f"{B_OV}/24")
    v = _vxlanpy(topo, a, "--local", A_UL, "--remote", B_UL, "--ageing", "2", "-v")
    b_mac = _mac(b, "vx0")

    _ping(a, B_OV, count=1)
    assert v.wait_line("'event': 'learned'", 3), v.lines
    t_learned = time.monotonic()
    assert [e["mac"] for e in v.events("learned")] == [b_mac]
    # the last refresh was the echo reply, just now; ageing is 2 s (1 s wheel granularity).
    # b's kernel re-probes a only after ~5 s (delay_first_probe_time), too late to refresh it.
    assert v.wait_line("'event': 'aged'", 5), v.lines
    assert time.monotonic() - t_learned <= 5
    aged = v.events("aged")
    assert [(e["mac"], e["remote"], e["vni"]) for e in aged] == [(b_mac, B_UL, VNI)]

    # after ageing the next unicast frame floods to the remotes and b is learned again
    _ping(a, B_OV, count=1)
    assert v.stop() == 0
    seg = _segment(v.stats())
    assert seg["aged"] == 1 and seg["learned"] == 2 and seg["l2_misses"] >= 1, seg


# --- 4. multicast underlay -----------------------------------------------------------------------


def test_multicast_underlay(topo: Topology) -> None:
    group = "239.1.1.1"
    a, b, c = (_host(topo, n) for n in "abc")
    dev = topo.switch([a, b, c], [f"{A_UL}/24", f"{B_UL}/24", f"{C_UL}/24"])
    # the switch bridge keeps IGMP snooping on (the default): b and c join when vx0 comes up,
    # and vxlanpy's socket must really join the group for a to get any BUM traffic at all
    for h, ov in ((b, B_OV), (c, C_OV)):
        topo.kernel_vxlan(h, vni=VNI, dev=dev, group=group, address=f"{ov}/24")
    v = _vxlanpy(topo, a, "--local", A_UL, "--group", group, "--dev", dev, "-v")
    assert group in a.sh("ip", "maddr", "show", "dev", dev)

    _ping(a, B_OV, count=5)  # ARP request to the group; reply unicast from b
    _ping(c, A_OV, count=5)  # c's ARP request arrives via the group
    _ping(a, C_OV, count=3)
    assert v.stop() == 0
    learned = {(e["mac"], e["remote"]) for e in v.events("learned")}
    assert learned == {(_mac(b, "vx0"), B_UL), (_mac(c, "vx0"), C_UL)}, learned
    seg = _segment(v.stats())
    assert seg["floods"] >= 1, seg
    # b learned a's MAC behind a's unicast address (vxlanpy sends from --local)
    fdb_b = b.sh("bridge", "fdb", "show", "dev", "vx0")
    assert f"dst {A_UL}" in fdb_b, fdb_b


# --- 5. hostile wire -----------------------------------------------------------------------------

_HOSTILE = r"""
import json, random, socket, sys, time
dst, port, vni, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(4789)
HDR = lambda flags, v: bytes([flags, 0, 0, 0]) + v.to_bytes(3, "big") + b"\0"
FRAME = b"\xff" * 6 + bytes.fromhex("020000000099") + b"\x08\x00" + bytes(46)

def classify(p):  # the receive rules of the engine, default (non-strict) mode
    if len(p) < 8:
        return "too-short"
    if not p[0] & 0x08:
        return "no-i-flag"
    if len(p) - 8 < 14:
        return "inner-too-short"
    return "unknown-vni" if int.from_bytes(p[4:7], "big") != vni else None

expect = {}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
deadline = time.monotonic() + 20
for i in range(n):
    kind = i % 5
    if kind == 0:  # shorter than the VXLAN header (including empty datagrams)
        p = rng.randbytes(rng.randrange(0, 8))
    elif kind == 1:  # I flag clear, otherwise a good packet for our VNI
        p = HDR(rng.randrange(256) & ~0x08, vni) + FRAME
    elif kind == 2:  # random bytes (anything our VNI would accept is re-drawn)
        while True:
            p = rng.randbytes(rng.randrange(0, 120))
            if classify(p):
                break
    elif kind == 3:  # valid header, unknown VNI, good frame
        p = HDR(0x08, (vni + 1 + rng.randrange(1000)) % (1 << 24)) + FRAME
    else:  # valid header for our VNI, inner frame shorter than an Ethernet header
        p = HDR(0x08, vni) + rng.randbytes(rng.randrange(0, 14))
    r = classify(p)
    assert r is not None
    expect[r] = expect.get(r, 0) + 1
    s.sendto(p, (dst, port))
    if i % 50 == 49:  # pace a little: stay far below the receiver's socket buffer
        time.sleep(0.002)
    assert time.monotonic() < deadline
print(json.dumps(expect))
"""


def _udp_snmp(h: Host) -> dict[str, int]:
    lines = [ln.split() for ln in h.sh("cat", "/proc/net/snmp").splitlines() if ln[:4] == "Udp:"]
    return dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))


def test_hostile_wire(topo: Topology) -> None:
    n = 5000
    a, b = _host(topo, "a"), _host(topo, "b")
    dev = topo.link(a, b, f"{A_UL}/24", f"{B_UL}/24")
    topo.kernel_vxlan(b, vni=VNI, dev=dev, remote=A_UL, address=f"{B_OV}/24")
    v = _vxlanpy(topo, a, "--local", A_UL, "--remote", B_UL)
    _ping(a, B_OV, count=1)
    snmp0 = _udp_snmp(a)

    out = b.sh(sys.executable, "-c", _HOSTILE, A_UL, "4789", str(VNI), str(n), timeout=60)
    expect = json.loads(out)
    assert sum(expect.values()) == n and set(expect) == {
        "too-short", "no-i-flag", "inner-too-short", "unknown-vni"
    }  # fmt: skip
    _ping(a, B_OV, count=3)  # still forwarding, both ways
    _ping(b, A_OV, count=3)
    assert v.proc.poll() is None, v.lines
    snmp1 = _udp_snmp(a)
    assert v.stop() == 0

    stats = v.stats()
    drops = stats["unattributed"]["drops"]  # type: ignore[index]
    # a datagram the kernel dropped before vxlanpy could read it (full socket buffer, counted
    # in a's Udp RcvbufErrors) cannot be counted by vxlanpy; with the 8 MiB buffer and the paced
    # sender there should be none, and we allow none beyond what the kernel itself reports
    lost = snmp1["RcvbufErrors"] - snmp0["RcvbufErrors"]
    assert lost == 0, (snmp0, snmp1)
    assert drops == expect, (drops, expect)
    assert stats["unattributed"]["dropped"] == n  # type: ignore[index]
    seg = _segment(stats)
    assert seg["dropped"] == 0, seg  # nothing hostile was attributed to the segment
    assert stats["socket_errors"] == {}, stats
