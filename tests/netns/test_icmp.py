"""A peer that is gone, seen through ICMP (black box, through the CLI): vxlanpy on ``a``, a
router ``r``, the kernel's vxlan on ``b``.

- b's UDP port closes (its vxlan device deleted): b answers with ICMP port unreachable;
- b's host is gone (its link deleted): r has no route to it and answers net unreachable.

Each time the errors are counted for b's address within 1 s, an ``icmp`` event is streamed,
vxlanpy's CPU stays low (the error queues are drained on readiness, no busy loop), no datagram
is refused for a pending error, and traffic resumes when b comes back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Vxlanpy, ping
from test_control import REPO

from vxlanpy.control import request
from vxlanpy.netns import Host, Topology, wait_for

UA, RA, RB, UB = "198.18.0.1", "198.18.0.254", "198.18.1.254", "198.18.1.2"
OA, OB = "198.19.0.1", "198.19.0.2"
VNI = 42
PEER_MAC = "02:00:00:00:00:b2"


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks


def _peer_vxlan(topo: Topology, b: Host, dev: str) -> None:
    topo.kernel_vxlan(b, vni=VNI, dev=dev, remote=UA, local=UB, address=f"{OB}/24")
    b.ip("link", "set", "vx0", "address", PEER_MAC)


def _link_rb(topo: Topology, r: Host, b: Host, mtu: int | None = None) -> str:
    dev = topo.link(r, b, f"{RB}/24", f"{UB}/24", mtu=mtu)
    b.ip("route", "add", "198.18.0.0/24", "via", RB)
    return dev


def _routed(topo: Topology) -> tuple[Host, Host, Host]:
    """a -- r (forwarding) and b, not linked to r yet."""
    a, r, b = topo.add_host("a"), topo.add_host("r"), topo.add_host("b")
    for h in (a, r, b):
        h.no_ipv6()
    topo.link(a, r, f"{UA}/24", f"{RA}/24")
    r.sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    a.ip("route", "add", "198.18.1.0/24", "via", RA)
    return a, r, b


def _args(sock: str) -> list[str]:
    return ["--vni", str(VNI), "--local", UA, "--remote", UB, "--tap", "vx0"] + [
        "--address",
        f"{OA}/24",
        "--control",
        sock,
    ]


def _icmp(sock: str) -> dict[str, Any]:
    st = request(sock, {"cmd": "stats"})
    return dict(st["icmp"].get(UB, {}))


def _sent_after(a: Host, sock: str, kind: str, before: int) -> float:
    """Ping the peer until vxlanpy counts a new ``kind`` error for it; seconds it took from the
    first echo request (sent at 20 per second)."""
    pinger = a.popen(["ping", "-c", "40", "-i", "0.05", "-W", "1", OB], stdout=subprocess.DEVNULL)
    t0 = time.monotonic()
    try:
        assert wait_for(lambda: _icmp(sock).get(kind, 0) > before, 3, 0.02), _icmp(sock)
        return time.monotonic() - t0
    finally:
        pinger.wait(10)


@pytest.mark.parametrize("backend", ["cffi", "python"])
def test_peer_unreachable(topo: Topology, tmp_path: Path, backend: str) -> None:
    a, r, b = _routed(topo)
    _peer_vxlan(topo, b, _link_rb(topo, r, b))
    sock = str(tmp_path / "a.sock")
    v = Vxlanpy(topo, a, _args(sock), backend=backend)
    pid = v.proc.pid
    ev = a.popen(
        [sys.executable, "-m", "vxlanpy.cli", "events", "--json", "--control", sock],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    ping(a, OB, count=3)
    assert _icmp(sock) == {}

    # 1. the peer's UDP port closes: ICMP port unreachable from b
    b.ip("link", "del", "vx0")
    cpu0 = _cpu_s(pid)
    took = _sent_after(a, sock, "unreachable", 0)
    time.sleep(1.5)  # the rest of the 2 s of pings at 20/s
    cpu = _cpu_s(pid) - cpu0
    got = _icmp(sock)
    print(f"{backend}: port closed: counted after {took:.3f} s; {got}; CPU {cpu:.2f} s")
    assert took < 1.0
    assert got["last"] == {"type": 3, "code": 3, "from": UB}
    assert cpu < 0.5, cpu  # 2 s of pings at 20/s: no busy loop
    st = request(sock, {"cmd": "stats"})
    assert "ECONNREFUSED" not in st["socket_errors"], st["socket_errors"]  # nothing refused
    text = subprocess.run(
        ["ip", "netns", "exec", a.ns, sys.executable, "-m", "vxlanpy.cli", "stats"]
        + ["--control", sock],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    ).stdout
    assert f"icmp errors for {UB}: unreachable " in text, text

    # it comes back: traffic resumes
    _peer_vxlan(topo, b, "u1")
    a.sh("ip", "neigh", "flush", "dev", "vx0")
    assert wait_for(lambda: " 0% packet loss" in a.sh("ping", "-c", "2", "-W", "1", OB), 5, 0.2)

    # 2. the peer's host is gone: the router has no route to it any more
    before = _icmp(sock)["unreachable"]
    r.ip("link", "del", "u1")
    took = _sent_after(a, sock, "unreachable", before)
    got = _icmp(sock)
    print(f"{backend}: host gone: counted after {took:.3f} s; {got}")
    assert took < 1.0
    assert got["last"] == {"type": 3, "code": 0, "from": RA}  # net unreachable, from r

    # it comes back: traffic resumes
    _peer_vxlan(topo, b, _link_rb(topo, r, b))
    a.sh("ip", "neigh", "flush", "dev", "vx0")
    assert wait_for(lambda: " 0% packet loss" in a.sh("ping", "-c", "2", "-W", "1", OB), 5, 0.2)

    assert v.stop() == 0, v.lines
    topo.stop(ev)
    assert ev.stdout is not None
    events = [json.loads(line) for line in ev.stdout.read().decode().splitlines()]
    icmp = [e for e in events if e["event"] == "icmp"]
    assert icmp and all(e["remote"] == UB for e in icmp), events
    assert icmp[0]["kind"] == "unreachable" and icmp[0]["icmp_code"] == 3
    assert sum(e["count"] for e in icmp) <= got["unreachable"]
    assert len(icmp) <= 2 + 2 * 4  # at most one per second over the two outages


def test_fragmentation_needed_reports_the_mtu(topo: Topology, tmp_path: Path) -> None:
    """--df set and a 1300-byte link behind the router: r answers "fragmentation needed" with
    the MTU; it is counted for b with that MTU, and later sends too large for the path are
    refused by the kernel and counted (EMSGSIZE)."""
    a, r, b = _routed(topo)
    _peer_vxlan(topo, b, _link_rb(topo, r, b, mtu=1300))
    sock = str(tmp_path / "a.sock")
    v = Vxlanpy(topo, a, [*_args(sock), "--df", "set"])
    ping(a, OB, count=2)  # small frames pass
    a.sh("ping", "-c", "3", "-i", "0.2", "-W", "1", "-s", "1400", "-M", "dont", OB, check=False)
    assert wait_for(lambda: _icmp(sock).get("frag_needed", 0) > 0, 2, 0.02), _icmp(sock)
    got = _icmp(sock)
    st = request(sock, {"cmd": "stats"})
    print(f"frag needed: {got}; socket errors {st['socket_errors']}")
    assert got["mtu"] == 1300 and got["last"] == {"type": 3, "code": 4, "from": RA}
    assert v.stop() == 0, v.lines
