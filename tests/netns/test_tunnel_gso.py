"""``--tunnel-gso`` against the kernel's vxlan: TCP super-frames leave whole as UDP-tunnel GSO
packets (through the redirected TAP of io/tgso.py), the data arrives intact both ways, and the
kernel peer's vxlan device receives one packet per super-frame instead of one per datagram.
On a kernel without UDP-tunnel GSO on TAPs the flag is a clear start-up error."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import Vxlanpy, ping, tcp_transfer

from vxlanpy.control import request
from vxlanpy.io.tgso import probe
from vxlanpy.netns import Host, Topology, wait_for

MB = 1_000_000
UA, UB = "198.18.0.1", "198.18.0.2"


def _rx(h: Host) -> int:
    return int(h.sh("cat", "/sys/class/net/vx0/statistics/rx_packets"))


def _args(*extra: str) -> list[str]:
    return ["--vni", "120", "--local", UA, "--remote", UB, "--tap", "vx0"] + [
        "--address",
        "198.19.0.1/24",
        *extra,
    ]


@pytest.mark.parametrize("sender", [True, False], ids=["send-thread", "one-thread"])
def test_tcp_super_frames_leave_whole(topo: Topology, tmp_path: Path, sender: bool) -> None:
    a, b = topo.add_host("a"), topo.add_host("b")
    dev = topo.link(a, b, f"{UA}/24", f"{UB}/24")
    topo.kernel_vxlan(b, vni=120, dev=dev, remote=UA, address="198.19.0.2/24")
    why = probe()
    sock = str(tmp_path / "a.sock")
    extra = ["--tunnel-gso", "--control", sock] + ([] if sender else ["--no-send-thread"])
    if why is not None:  # a kernel without it: refused at start, in one line
        with pytest.raises(AssertionError, match="UDP-tunnel GSO"):
            Vxlanpy(topo, a, _args(*extra))
        return
    v = Vxlanpy(topo, a, _args(*extra))
    ping(a, "198.19.0.2")
    # the link to b is installed within a refresh period (the neighbour is resolved by now)
    assert wait_for(lambda: _tg(sock)["remotes_linked"] == 1, 5), _tg(sock)
    rx0 = _rx(b)
    tcp_transfer(a, b, "198.19.0.2", 40 * MB)
    got = _rx(b) - rx0
    tcp_transfer(b, a, "198.19.0.1", 20 * MB, port=5002)
    assert v.stop() == 0
    st = v.stats()
    tg = st["tunnel_gso"]
    assert isinstance(tg, dict) and tg["on"] and tg["remotes_linked"] == 1, tg
    frames = int(tg["frames"])
    # 40 MB in datagrams of at most 1450 bytes would be 27,000+ packets at b's vxlan device;
    # sent whole, each super-frame is one (plus the small frames and the first, cut ones)
    assert frames > 0 and got < 40 * MB / 1450 / 4, (frames, got)
    assert st["losses"]["total"] == 0, st["losses"]  # type: ignore[index]
    assert st["socket_errors"] == {}, st["socket_errors"]


def _tg(sock: str) -> dict[str, object]:
    tg = request(sock, {"cmd": "stats"})["tunnel_gso"]
    assert isinstance(tg, dict)
    return tg


def _nft_out_bytes(h: Host) -> int:
    """Bytes the output rule of table inet vxt counted (VXLAN datagrams to port 4789)."""
    rules = json.loads(h.sh("nft", "-j", "list", "chain", "inet", "vxt", "out"))["nftables"]
    return sum(e["counter"]["bytes"] for r in rules if "rule" in r for e in r["rule"]["expr"]
               if "counter" in e)  # fmt: skip


def test_auto_withholds_while_the_host_has_rules_to_skip(topo: Topology, tmp_path: Path) -> None:
    """The default (``auto``): super-frames go whole while nothing on a's IPv4 output path
    would be skipped; an nftables table or an xfrm policy added while it runs takes the links
    away at once (the firewall then counts every byte), removing it brings them back; a route
    change takes them away and they come back."""
    if probe() is not None:
        pytest.skip("this kernel has no UDP-tunnel GSO on TAPs: auto takes the datagram path")
    a, b = topo.add_host("a"), topo.add_host("b")
    dev = topo.link(a, b, f"{UA}/24", f"{UB}/24")
    topo.kernel_vxlan(b, vni=120, dev=dev, remote=UA, address="198.19.0.2/24")
    sock = str(tmp_path / "a.sock")
    v = Vxlanpy(topo, a, _args("--control", sock))
    ping(a, "198.19.0.2")
    assert wait_for(lambda: _tg(sock)["remotes_linked"] == 1, 5), _tg(sock)
    tg = _tg(sock)
    assert tg["mode"] == "auto" and tg["on"] and tg["why_not"] is None, tg
    f0 = int(tg["frames"])
    tcp_transfer(a, b, "198.19.0.2", 10 * MB)
    f1 = int(_tg(sock)["frames"])
    assert f1 > f0, (f0, f1)

    # a firewall of input rules, with an output chain that holds none and accepts (Debian's
    # default ruleset is such chains): nothing on the way out to skip, the links stay
    a.sh("nft", "add table inet vxt; add chain inet vxt in { type filter hook input priority "
         "0; }; add rule inet vxt in udp dport 4789 counter; add chain inet vxt out { type "
         "filter hook output priority 0; policy accept; }")  # fmt: skip
    w0 = int(_tg(sock)["withdrawals"])
    tcp_transfer(a, b, "198.19.0.2", 10 * MB)
    tg = _tg(sock)
    assert tg["why_not"] is None and tg["remotes_linked"] == 1, tg
    assert int(tg["frames"]) > f1 and int(tg["withdrawals"]) == w0, (f1, w0, tg)
    f1 = int(tg["frames"])
    inbound = json.loads(a.sh("nft", "-j", "list", "chain", "inet", "vxt", "in"))["nftables"]
    assert any("counter" in e and e["counter"]["packets"] > 0 for r in inbound if "rule" in r
               for e in r["rule"]["expr"]), inbound  # fmt: skip

    # a rule on the output hook: withheld within a moment, and the hook sees all the bytes
    a.sh("nft", "add rule inet vxt out udp dport 4789 counter")
    assert wait_for(lambda: _tg(sock)["remotes_linked"] == 0, 2), _tg(sock)
    why = lambda: str(_tg(sock)["why_not"])  # noqa: E731
    want = "nftables: chain inet vxt out (hook output, 1 rule)"
    assert wait_for(lambda: why() == want, 2), why()
    tcp_transfer(a, b, "198.19.0.2", 10 * MB)
    assert int(_tg(sock)["frames"]) == f1
    assert _nft_out_bytes(a) > 10 * MB, _nft_out_bytes(a)
    a.sh("nft", "delete", "table", "inet", "vxt")
    assert wait_for(lambda: _tg(sock)["remotes_linked"] == 1, 5), _tg(sock)
    assert _tg(sock)["why_not"] is None

    # an IPsec policy (even one for other addresses: it is the kernel's to match, not ours)
    a.ip("xfrm", "policy", "add", "dir", "out", "src", "198.18.99.1", "dst", "198.18.99.2",
         "tmpl", "proto", "esp", "mode", "transport")  # fmt: skip
    assert wait_for(lambda: _tg(sock)["remotes_linked"] == 0, 2), _tg(sock)
    assert wait_for(lambda: why() == "xfrm: 1 IPsec policy", 2), why()
    a.ip("xfrm", "policy", "flush")
    assert wait_for(lambda: _tg(sock)["remotes_linked"] == 1, 5), _tg(sock)

    # a route change: every link is taken away and looked up again
    w0 = int(_tg(sock)["withdrawals"])
    a.ip("route", "add", "198.18.7.0/24", "dev", dev)
    assert wait_for(lambda: int(_tg(sock)["withdrawals"]) > w0, 2), _tg(sock)
    assert wait_for(lambda: _tg(sock)["remotes_linked"] == 1, 5), _tg(sock)
    tcp_transfer(a, b, "198.19.0.2", 10 * MB)
    assert int(_tg(sock)["frames"]) > f1
    assert v.stop() == 0
    st = v.stats()
    assert st["losses"]["total"] == 0, st["losses"]  # type: ignore[index]


def test_off_and_auto_where_it_cannot_work(topo: Topology, tmp_path: Path) -> None:
    """``--tunnel-gso off`` sets nothing up; ``auto`` with a firewall there at start, or
    without offloads, says why in stats and takes the datagram path, the data intact."""
    a, b = topo.add_host("a"), topo.add_host("b")
    dev = topo.link(a, b, f"{UA}/24", f"{UB}/24")
    topo.kernel_vxlan(b, vni=120, dev=dev, remote=UA, address="198.19.0.2/24")
    cases: list[tuple[list[str], str]] = [
        (["--tunnel-gso", "off"], "off"),
        (["--no-offload"], "needs the C fast path and offloads"),
    ]
    if probe() is None:
        cases.append(([], "nftables: chain ip vxstart post (hook postrouting, 1 rule)"))
    for extra, why in cases:
        if why.startswith("nftables"):
            a.sh("nft", "add table ip vxstart; add chain ip vxstart post { type filter hook "
                 "postrouting priority 0; }; add rule ip vxstart post counter")  # fmt: skip
        sock = str(tmp_path / f"a{len(extra)}.sock")
        links0 = a.sh("ip", "-o", "link").count("vxg")
        v = Vxlanpy(topo, a, _args("--control", sock, *extra))
        ping(a, "198.19.0.2")
        tcp_transfer(a, b, "198.19.0.2", 5 * MB)
        tg = _tg(sock)
        assert tg["why_not"] == why and tg["frames"] == 0 and tg["remotes_linked"] == 0, tg
        made = a.sh("ip", "-o", "link").count("vxg") - links0
        assert made == (1 if why.startswith("nftables") else 0), (extra, made)
        assert v.stop() == 0


_NEXT_HOP = """
import json, sys
from vxlanpy.io import netlink
dests = sys.argv[1:]
alone = [netlink.next_hop(d) for d in dests]
macs, hops = {}, {}
with netlink.session() as ipr:
    shared = [netlink.next_hop(d, ipr, macs, hops) for d in dests]
enc = lambda h: None if h is None else [h[0], h[1].hex(), h[2].hex(), h[3]]
print(json.dumps({"alone": [enc(h) for h in alone], "shared": [enc(h) for h in shared],
                  "macs": {str(k): v.hex() for k, v in macs.items()}, "hops": hops}))
"""


def test_next_hop_asks_for_one_neighbour(topo: Topology) -> None:
    """The links' lookup (netlink.next_hop): the route, then the one neighbour entry asked for
    by address among many, resolved or not, direct or through a gateway; the same answers
    through one session for a round of lookups, the device's MAC asked for once."""
    a, b = topo.add_host("a"), topo.add_host("b")
    dev = topo.link(a, b, f"{UA}/24", f"{UB}/24")
    for k in range(3, 43):  # 40 neighbours the lookup must not have to read
        a.ip("neigh", "add", f"198.18.0.{k}", "lladdr", f"02:00:00:00:01:{k:02x}", "dev", dev)
    a.ip("neigh", "add", "198.18.0.50", "lladdr", "02:00:00:00:01:50", "dev", dev, "nud", "stale")
    a.ip("route", "add", "198.18.200.0/24", "via", "198.18.0.7", "dev", dev)
    a.ip("route", "add", "198.18.201.0/24", "via", "198.18.0.60", "dev", dev)  # unresolved
    own = a.sh("cat", f"/sys/class/net/{dev}/address").strip().replace(":", "")
    index = int(a.sh("cat", f"/sys/class/net/{dev}/ifindex"))
    dests = ["198.18.0.9", "198.18.0.50", "198.18.200.5", "198.18.0.99", "198.18.201.5"]
    got = json.loads(a.sh(sys.executable, "-c", _NEXT_HOP, *dests))
    want = [
        [index, own, "020000000109", UA],
        [index, own, "020000000150", UA],  # stale is usable: sending revalidates it
        [index, own, "020000000107", UA],  # through the gateway: its neighbour entry
        None,  # no entry yet
        None,  # the gateway has none
    ]
    assert got["alone"] == want, got
    assert got["shared"] == want, got
    assert got["macs"] == {str(index): own}, got
    # the next hop of each routed destination, resolved or not (what neighbour notifications
    # are matched against); no route, no hop
    a.ip("route", "add", "unreachable", "198.18.202.0/24")
    got = json.loads(a.sh(sys.executable, "-c", _NEXT_HOP, *dests, "198.18.202.1"))
    assert got["hops"] == {
        "198.18.0.9": "198.18.0.9", "198.18.0.50": "198.18.0.50", "198.18.200.5": "198.18.0.7",
        "198.18.0.99": "198.18.0.99", "198.18.201.5": "198.18.0.60",
    }, got  # fmt: skip
