"""vxlanpy against a hostile VTEP on the underlay (VXLAN has no authentication): a MAC flood
with default settings leaves memory bounded and the overlay working, refusals counted; an
allowlist drops another VTEP's VXLAN and learns nothing from it.

Three hosts on one switch: a (vxlanpy), b (the kernel's vxlan, the legitimate peer), x (the
attacker, tests/netns/flood.py). ``VXLANPY_FLOOD`` sets the flood's size (default 100,000 at
25 kpps; docs/reliability.md has the 10^6 run)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Vxlanpy, ping

from vxlanpy.netns import Host, Topology

FLOOD = str(Path(__file__).with_name("flood.py"))
N = int(os.environ.get("VXLANPY_FLOOD", "100000"))
PPS = int(os.environ.get("VXLANPY_FLOOD_PPS", "25000"))
A, B, X = "198.18.0.1", "198.18.0.2", "198.18.0.3"


def _three(topo: Topology) -> tuple[Host, Host, Host, str]:
    a, b, x = topo.add_host("a"), topo.add_host("b"), topo.add_host("x")
    dev = topo.switch([a, b, x], [f"{A}/24", f"{B}/24", f"{X}/24"])
    topo.kernel_vxlan(b, vni=42, dev=dev, remote=A, local=B, address="198.19.0.2/24")
    return a, b, x, dev


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"VmRSS:\s+(\d+) kB", f.read())
    assert m is not None
    return int(m.group(1))


def _seg(v: Vxlanpy) -> dict[str, object]:
    stats = v.stats()
    seg = stats["segments"]["42"]  # type: ignore[index]
    assert isinstance(seg, dict)
    return seg


@pytest.mark.alone  # a flood: its load would bend the timing of tests beside it
def test_mac_flood_with_default_settings(topo: Topology) -> None:
    a, b, x, _dev = _three(topo)
    v = Vxlanpy(
        topo,
        a,
        ["--vni", "42", "--local", A, "--remote", B, "--tap", "vx0", "--address", "198.19.0.1/24"],
    )
    ping(a, "198.19.0.2", count=3)
    before = _rss_kb(v.proc.pid)
    flood = x.popen(
        [sys.executable, FLOOD, A, "4789", "42", str(N), str(PPS)], stdout=subprocess.PIPE
    )
    seconds = N / PPS
    pings = max(20, int(seconds / 0.05))
    out = a.sh(
        "ping",
        "-c",
        str(pings),
        "-i",
        "0.05",
        "-W",
        "1",
        "198.19.0.2",
        check=False,
        timeout=seconds + 60,
    )
    sent = json.loads(flood.communicate(timeout=seconds + 60)[0])
    after = _rss_kb(v.proc.pid)
    m = re.search(r"(\d+) received", out)
    assert m is not None, out
    received = int(m.group(1))
    assert v.stop() == 0
    seg = _seg(v)
    assert sent["sent"] == N
    assert received >= 0.99 * pings, out[-300:]  # the overlay keeps working
    assert (after - before) < 64 * 1024, (before, after)  # bounded memory (kB)
    learned, refused = int(seg["learned"]), int(seg["learn_refused"])  # type: ignore[call-overload]
    assert learned <= 16384 + 1  # the default cap (and b's MAC)
    assert refused > 0 and learned + refused >= 0.9 * N, seg  # the rest refused, counted
    print(
        f"flood {N} at {PPS} pps: RSS +{(after - before) / 1024:.1f} MB, learned {learned}, "
        f"refused {refused}, pings {received}/{pings}"
    )


def test_allowlist_drops_other_vteps(topo: Topology) -> None:
    a, b, x, _dev = _three(topo)
    v = Vxlanpy(
        topo,
        a,
        [
            "--vni",
            "42",
            "--local",
            A,
            "--remote",
            B,
            "--tap",
            "vx0",
            "--address",
            "198.19.0.1/24",
            "--allow",
            f"{B}/32",
        ],
    )
    flood = x.sh(sys.executable, FLOOD, A, "4789", "42", "500", "5000", timeout=60)
    assert json.loads(flood)["sent"] == 500
    ping(a, "198.19.0.2")
    ping(b, "198.19.0.1")
    assert v.stop() == 0
    seg = _seg(v)
    drops = seg["drops"]
    assert isinstance(drops, dict) and drops.get("source-not-allowed") == 500, seg
    assert seg["learned"] == 1  # b's MAC only: nothing from x
