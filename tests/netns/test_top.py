"""``vxlanpy-tunnel top`` on a VTEP that a kernel peer pings: JSON lines that parse, rates that
are never negative and follow the traffic; the text form is plain lines when not on a terminal.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from conftest import Vxlanpy, ping

from vxlanpy.netns import Host, Topology


def _top(host: Host, *args: str) -> str:
    return host.sh(sys.executable, "-m", "vxlanpy.cli", "top", "--interval", "1", *args)


def _rates(out: str) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in out.splitlines()]
    for r in rows:
        assert r["interval"] > 0.5
        for s in [*r["segments"].values(), *r["peers"].values()]:
            assert all(v is None or v >= 0 for v in s.values()), s
    return rows


def test_top_follows_the_traffic(topo: Topology) -> None:
    a, b = topo.add_host("a"), topo.add_host("b")
    dev = topo.link(a, b, "198.18.0.1/24", "198.18.0.2/24")
    topo.kernel_vxlan(b, vni=120, dev=dev, remote="198.18.0.1", address="198.19.0.2/24")
    v = Vxlanpy(
        topo,
        a,
        ["--vni", "120", "--local", "198.18.0.1", "--remote", "198.18.0.2", "--tap", "vx0"]
        + ["--address", "198.19.0.1/24"],
    )
    ping(b, "198.19.0.1", count=2)  # learned both ways
    pinger = b.popen(["ping", "-c", "40", "-i", "0.1", "-q", "198.19.0.1"])
    busy = _rates(_top(a, "--count", "2", "--json"))
    assert len(busy) == 2
    assert pinger.wait(30) == 0
    quiet = _rates(_top(a, "--count", "1", "--json"))

    seg_busy = [r["segments"]["120"] for r in busy]
    assert all(s["rx_packets_s"] >= 3 and s["tx_packets_s"] >= 3 for s in seg_busy), seg_busy
    assert all(s["fdb"] == 1 for s in seg_busy)
    assert all(s["fast_path_share"] is not None for s in seg_busy)  # the C path's share
    peer = [r["peers"]["198.18.0.2"]["rx_packets_s"] for r in busy]
    assert all(p >= 3 for p in peer), peer
    assert quiet[0]["segments"]["120"]["rx_packets_s"] < min(s["rx_packets_s"] for s in seg_busy)

    text = _top(a, "--count", "2")  # stdout is a pipe: plain blocks, no escape sequences
    assert "\x1b" not in text and text.count("VNI ") == 2 and "198.18.0.2" in text
    spawn = "import pty, sys; pty.spawn(sys.argv[1:])"  # on a terminal: redrawn in place
    tty = a.sh(
        sys.executable, "-c", spawn, sys.executable, "-m", "vxlanpy.cli", "top", "--count", "2"
    )
    assert tty.count("\x1b[H\x1b[2J") == 2 and tty.count("VNI ") == 2, tty
    assert v.stop() == 0
