"""One vxlanpy VTEP serving two VNIs (a ``--config`` file with two segments) against a kernel
peer that has two vxlan devices sharing UDP port 4789, as a kernel VTEP with several VNIs is
usually built. Each VNI carries its own traffic and nothing leaks between them.

IPv6 is switched off in both namespaces before any device exists, so that no router
solicitation or MLD report moves a counter behind the test's back: every frame counted is one
the test sent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Vxlanpy, ping

from vxlanpy.netns import Host, Topology

REPO = str(Path(__file__).resolve().parents[2])
UA, UB = "198.18.0.1", "198.18.0.2"

CONFIG = """\
[vtep]
local = "{ua}"
control = "{sock}"

[[segment]]
vni = 10
tap = "vx10"
address = "198.19.10.1/24"
remotes = ["{ub}"]

[[segment]]
vni = 20
tap = "vx20"
address = "198.19.20.1/24"
remotes = ["{ub}"]
"""

# Send N raw Ethernet frames on a device (AF_PACKET): dst MAC, EtherType 0x88b5 (local
# experimental), a marker payload. Bounded by N.
_SEND = """
import socket, sys
dev, dst, n = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", "")), int(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((dev, 0))
src = s.getsockname()[4]
frame = dst + src + b"\\x88\\xb5" + b"vxlanpy-multivni-marker".ljust(46, b".")
for _ in range(n):
    s.send(frame)
"""

BROADCAST = "ff:ff:ff:ff:ff:ff"


def _counter(h: Host, dev: str, name: str) -> int:
    return int(h.sh("cat", f"/sys/class/net/{dev}/statistics/{name}"))


def _mac(h: Host, dev: str) -> str:
    return h.sh("cat", f"/sys/class/net/{dev}/address").strip()


def _send(h: Host, dev: str, dst: str, n: int) -> None:
    h.sh(sys.executable, "-c", _SEND, dev, dst, str(n))


def _stats(h: Host, sock: str) -> dict[str, dict[str, int]]:
    out = h.sh(sys.executable, "-m", "vxlanpy.cli", "stats", "--json", "--control", sock)
    return dict(json.loads(out)["segments"])


@pytest.fixture
def two_vnis(topo: Topology, tmp_path: Path):  # type: ignore[no-untyped-def]
    a = topo.add_host("a")
    b = topo.add_host("b")
    a.no_ipv6()
    b.no_ipv6()
    dev = topo.link(a, b, f"{UA}/24", f"{UB}/24")
    for vni in (10, 20):  # two kernel devices, one shared UDP socket on 4789
        topo.kernel_vxlan(
            b,
            vni=vni,
            dev=dev,
            remote=UA,
            local=UB,
            name=f"vx{vni}",
            address=f"198.19.{vni}.2/24",
        )
    sock = str(tmp_path / "a.sock")
    cfg = tmp_path / "a.toml"
    cfg.write_text(CONFIG.format(ua=UA, ub=UB, sock=sock))
    v = Vxlanpy(topo, a, ["--config", str(cfg)])
    assert "vni 10 tap vx10" in v.lines[0] and "vni 20 tap vx20" in v.lines[0], v.lines
    yield a, b, v, sock
    assert v.stop() == 0, v.lines


def test_ping_within_each_vni(two_vnis) -> None:  # type: ignore[no-untyped-def]
    a, b, v, sock = two_vnis
    ping(a, "198.19.10.2")
    ping(a, "198.19.20.2")
    ping(b, "198.19.10.1")
    ping(b, "198.19.20.1")
    st = _stats(a, sock)
    assert st["10"]["rx_packets"] >= 10 and st["20"]["rx_packets"] >= 10
    assert st["10"]["learned"] == 1 and st["20"]["learned"] == 1
    # each segment learned its own peer MAC, on its own VNI
    rows = json.loads(
        a.sh(sys.executable, "-m", "vxlanpy.cli", "fdb", "show", "--json", "--control", sock)
    )
    learned = {(r["vni"], r["mac"]) for r in rows if not r["permanent"]}
    assert learned == {(10, _mac(b, "vx10")), (20, _mac(b, "vx20"))}


def test_vni10_broadcast_does_not_reach_vni20(two_vnis) -> None:  # type: ignore[no-untyped-def]
    a, b, v, sock = two_vnis
    n = 50
    before = {d: _counter(b, d, "rx_packets") for d in ("vx10", "vx20")}
    st0 = _stats(a, sock)
    _send(a, "vx10", BROADCAST, n)  # broadcast on VNI 10: flooded to the peer on VNI 10 only
    # ARP broadcasts for an absent host on VNI 10, and a ping flood to the VNI 10 peer
    a.sh("ping", "-c", "3", "-i", "0.2", "-W", "1", "198.19.10.77", check=False)
    a.sh("ping", "-c", "100", "-i", "0.002", "-q", "198.19.10.2", check=False)
    after = {d: _counter(b, d, "rx_packets") for d in ("vx10", "vx20")}
    st1 = _stats(a, sock)
    assert after["vx10"] - before["vx10"] >= n + 100
    assert after["vx20"] == before["vx20"], (before, after)
    # vxlanpy's per-VNI counters agree: VNI 10 sent (and flooded), VNI 20 did nothing
    assert st1["10"]["tx_packets"] - st0["10"]["tx_packets"] >= n + 100
    assert st1["10"]["floods"] - st0["10"]["floods"] >= n
    for key in ("tx_packets", "rx_packets", "floods", "dropped"):
        assert st1["20"][key] == st0["20"][key], (key, st0["20"], st1["20"])


def test_peer_vni20_frame_goes_only_to_vx20(two_vnis) -> None:  # type: ignore[no-untyped-def]
    a, b, v, sock = two_vnis
    n = 30
    before = {d: _counter(a, d, "rx_packets") for d in ("vx10", "vx20")}
    st0 = _stats(a, sock)
    # Sent by the peer's VNI 20 device: broadcasts, then frames addressed to vx10's own MAC.
    # The VNI in the header decides the TAP, never the inner destination MAC.
    _send(b, "vx20", BROADCAST, n)
    _send(b, "vx20", _mac(a, "vx10"), n)
    after = {d: _counter(a, d, "rx_packets") for d in ("vx10", "vx20")}
    st1 = _stats(a, sock)
    assert after["vx20"] - before["vx20"] == 2 * n, (before, after)
    assert after["vx10"] == before["vx10"], (before, after)
    assert st1["20"]["rx_packets"] - st0["20"]["rx_packets"] == 2 * n
    assert st1["10"]["rx_packets"] == st0["10"]["rx_packets"]
    assert st1["10"]["tx_packets"] == st0["10"]["tx_packets"]


def test_stats_text_lists_both_vnis(two_vnis) -> None:  # type: ignore[no-untyped-def]
    a, b, v, sock = two_vnis
    p = subprocess.run(
        ["ip", "netns", "exec", a.ns, sys.executable, "-m", "vxlanpy.cli", "stats"]
        + ["--control", sock],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=REPO,
    )
    assert p.returncode == 0, p.stderr
    heads = [line.split(":")[0] for line in p.stdout.splitlines() if line.startswith("vni ")]
    assert heads == ["vni 10", "vni 20"], p.stdout


def test_change_without_vni_on_several_vnis_is_refused() -> None:
    """With several VNIs a change must name one (show lists them all); no root needed."""
    from vxlanpy.config import SegmentSpec, VtepConfig
    from vxlanpy.control import ControlServer
    from vxlanpy.tunnel import Vtep

    vtep = Vtep(VtepConfig(segments=[SegmentSpec(vni=10), SegmentSpec(vni=20)]))
    for spec in vtep.config.segments:
        vtep.engine.add_segment(spec.segment_config())
    server = ControlServer(vtep, "/nonexistent/unused.sock")
    req = {"cmd": "fdb", "op": "add", "mac": "02:00:00:00:00:01", "dst": "198.18.0.2"}
    resp = server.handle(req)
    assert resp["ok"] is False and "give vni" in resp["error"]
    assert server.handle({**req, "vni": 20})["ok"] is True
    assert 1 == len(vtep.segment(20).fdb) and 0 == len(vtep.segment(10).fdb)
