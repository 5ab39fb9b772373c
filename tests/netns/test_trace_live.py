"""``trace --live``, ``trace`` against a running VTEP, and pcapng captures (``capture -w``,
``run --capture``) on a VTEP talking to the kernel's vxlan, and under a hostile VTEP's load.

- The live trace of a ping labels the packets the C fast path forwarded alone ``fast-path``;
  ``trace`` (what would happen) of the same frame says the same.
- A capture during the p2p ping opens in tshark with inner frames (interface 0) and outer VXLAN
  datagrams (interface 1), exactly one comment per packet; capinfos finds nothing wrong.
- A drop-only capture while a hostile VTEP floods holds every dropped datagram with its
  reason: as many per reason as the drop counters say.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import Vxlanpy, ping

from vxlanpy.control import request
from vxlanpy.netns import Host, NetnsError, Topology, ensure_tools, wait_for
from vxlanpy.pcapng import read_pcapng

REPO = str(Path(__file__).resolve().parents[2])
FLOOD = str(Path(__file__).with_name("flood.py"))
UA, UB, UX = "198.18.0.1", "198.18.0.2", "198.18.0.3"
OA, OB = "198.19.0.1", "198.19.0.2"


def _cli(h: Host, *args: str) -> list[str]:
    return ["ip", "netns", "exec", h.ns, sys.executable, "-m", "vxlanpy.cli", *args]


def _run(h: Host, *args: str, timeout: float = 30) -> str:
    p = subprocess.run(_cli(h, *args), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert p.returncode == 0, (args, p.stderr)
    return p.stdout


def _pair(
    topo: Topology, tmp: Path, *extra: str, backend: str = "cffi"
) -> tuple[Host, Host, Vxlanpy, str]:
    a, b = topo.add_host("a"), topo.add_host("b")
    for h in (a, b):  # no IPv6 chatter: the only frames are the test's
        h.no_ipv6()
    dev = topo.link(a, b, f"{UA}/24", f"{UB}/24")
    topo.kernel_vxlan(b, vni=42, dev=dev, remote=UA, address=f"{OB}/24")
    ctl = str(tmp / "vx.sock")
    v = Vxlanpy(
        topo,
        a,
        ["--vni", "42", "--local", UA, "--remote", UB, "--tap", "vx0"]
        + ["--address", f"{OA}/24", "--control", ctl, *extra],
        backend=backend,
    )
    return a, b, v, ctl


def _streaming(h: Host, *args: str) -> subprocess.Popen[bytes]:
    """A trace or capture client, once the VTEP has accepted it (its first stderr line)."""
    p = h.popen(_cli(h, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert p.stderr is not None
    first = p.stderr.readline()  # the client says it is tracing, or fails and exits
    assert first.startswith(b"tracing up to"), first + p.stderr.read()
    return p


def _tools() -> None:
    try:
        ensure_tools({"tshark": "tshark", "capinfos": "tshark"})
    except NetnsError as exc:
        pytest.fail(str(exc))


def test_live_trace_labels_the_fast_path(topo: Topology, tmp_path: Path) -> None:
    a, b, v, ctl = _pair(topo, tmp_path)
    ping(a, OB, count=2)  # both learn each other; then the flow is C's
    peer_mac = b.sh("cat", "/sys/class/net/vx0/address").strip()
    own_mac = a.sh("cat", "/sys/class/net/vx0/address").strip()
    live = ["--live", "--control", ctl, "--json", "--ip", OB, "--count", "50", "--timeout", "6"]
    tr = _streaming(a, "trace", *live)
    ping(a, OB, count=3)
    out, err = tr.communicate(timeout=30)
    assert tr.returncode == 0, err
    recs = [json.loads(line) for line in out.decode().splitlines()]
    assert re.search(rb"\d+ packets traced", err), err
    recs = [r for r in recs if r["frame"].get("proto") == "icmp"]  # (and ARP, at times)
    assert len(recs) == 6, (recs, err)
    assert {r["direction"] for r in recs} == {"tx", "rx"}
    fast = [r for r in recs if r["handler"] == "fast-path"]
    assert any(r["direction"] == "tx" and r["rule"] == "fdb-hit" for r in fast), recs
    assert any(r["direction"] == "rx" and r["learn"] == "refreshed" for r in fast), recs
    for r in fast:
        if r["direction"] == "tx":
            assert [h["ip"] for h in r["remotes"]] == [UB] and r["fdb"] == "learned"
    # what would happen to the same frame: what the live trace showed
    frame = ["--vni", "42", "dst", peer_mac, "src", own_mac, "ip", OA, OB]
    sim = json.loads(_run(a, "trace", "--control", ctl, "--json", *frame))
    rec = sim["records"][0]
    assert (rec["handler"], rec["rule"], rec["fdb"]) == ("fast-path", "fdb-hit", "learned")
    assert [d["host"] for d in sim["datagrams"]] == [UB]
    text = _run(a, "trace", "--control", ctl, "--vni", "42", "arp", "who-has", "198.19.0.77")
    assert "rule tx.4" in text and "would send 1 datagram" in text  # no proxy: a flood
    assert v.stop() == 0


def _tshark_rows(path: str) -> list[list[str]]:
    fields = ["frame.interface_id", "vxlan.vni", "icmp.type", "frame.comment"]
    argv = ["tshark", "-r", path, "-T", "fields", *(x for f in fields for x in ("-e", f))]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return [line.split("\t") for line in p.stdout.splitlines()]


def _capinfos_clean(path: str) -> None:
    p = subprocess.run(["capinfos", path], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr


@pytest.mark.parametrize("backend", ["cffi", "python"])
def test_capture_during_p2p_ping(topo: Topology, tmp_path: Path, backend: str) -> None:
    _tools()
    start = str(tmp_path / "start.pcapng")
    a, b, v, ctl = _pair(topo, tmp_path, "--capture", start, backend=backend)
    live = str(tmp_path / "live.pcapng")
    cap = _streaming(a, "capture", "-w", live, "--control", ctl, "--count", "8", "--timeout", "20")
    ping(a, OB, count=4)
    ping(b, OA, count=2)
    _, err = cap.communicate(timeout=40)
    assert cap.returncode == 0, err
    assert v.stop() == 0
    for path in (start, live):
        rows = _tshark_rows(path)
        _capinfos_clean(path)
        _, pkts = read_pcapng(Path(path).read_bytes())
        assert len(rows) == len(pkts) > 0
        assert all(len(p.comments) == 1 for p in pkts)  # one comment per packet
        inner = [r for r in rows if r[0] == "0"]
        outer = [r for r in rows if r[0] == "1"]
        assert inner and outer, rows
        assert all(r[1] == "42" for r in outer), [r for r in outer if r[1] != "42"]
        # echo requests (8) and replies (0) on both interfaces
        for side in (inner, outer):
            assert {"0", "8"} <= {r[2] for r in side}, side
        assert all(r[3] for r in rows)
    assert len(_tshark_rows(live)) >= 8 * 2  # each record: an inner and an outer packet


def test_drop_capture_under_hostile_load(topo: Topology, tmp_path: Path) -> None:
    _tools()
    a, b, x = topo.add_host("a"), topo.add_host("b"), topo.add_host("x")
    dev = topo.switch([a, b, x], [f"{UA}/24", f"{UB}/24", f"{UX}/24"])
    topo.kernel_vxlan(b, vni=42, dev=dev, remote=UA, local=UB, address=f"{OB}/24")
    path = str(tmp_path / "drops.pcapng")
    v = Vxlanpy(
        topo,
        a,
        ["--vni", "42", "--local", UA, "--remote", UB, "--tap", "vx0", "--address", f"{OA}/24"]
        + ["--allow", f"{UB}/32", "--capture", path, "--capture-drops"],
        backend="cffi",
    )
    flood = x.sh(sys.executable, FLOOD, UA, "4789", "42", "3000", "20000", timeout=60)
    assert json.loads(flood)["sent"] == 3000
    bad = (  # no I flag, too short, unknown VNI: 100 of each
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "f = bytes.fromhex('02aabbccddee0a0000000001') + b'\\x08\\x00' + bytes(46)\n"
        "for k in range(100):\n"
        f"    s.sendto(bytes(8) + f, ('{UA}', 4789))\n"
        f"    s.sendto(b'\\x08\\x00', ('{UA}', 4789))\n"
        f"    s.sendto(bytes.fromhex('0800000000000700') + f, ('{UA}', 4789))\n"
    )
    x.sh(sys.executable, "-c", bad, timeout=60)
    ping(a, OB, count=3)
    assert wait_for(lambda: Path(path).stat().st_size > 0, 5)
    assert v.stop() == 0
    stats = v.stats()
    counted: Counter[str] = Counter()
    for part in (stats["unattributed"], stats["segments"]["42"]):  # type: ignore[index]
        counted.update(part["drops"])  # type: ignore[index]
    _, pkts = read_pcapng(Path(path).read_bytes())
    assert all(p.interface == 1 and len(p.comments) == 1 for p in pkts)  # outer packets only
    captured = Counter(p.comments[0].split("dropped: ", 1)[1].split(" ")[0] for p in pkts)
    assert captured == counted, (captured, counted)
    assert counted["source-not-allowed"] > 0 and counted["no-i-flag"] > 0
    assert counted["too-short"] > 0 and counted["unknown-vni"] > 0
    rows = _tshark_rows(path)
    _capinfos_clean(path)
    assert len(rows) == len(pkts)


def test_a_client_that_does_not_read_holds_up_nothing(topo: Topology, tmp_path: Path) -> None:
    a, b, v, ctl = _pair(topo, tmp_path)
    ping(a, OB, count=2)
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.connect(ctl)
    req = {"cmd": "trace", "op": "live", "count": 1000000, "timeout": 60, "bytes": True}
    stuck.sendall(json.dumps(req).encode() + b"\n")  # and never reads
    try:
        # 1600 records: more than its queue (1024) and the socket buffer hold
        out = ping(a, OB, count=800, extra=("-i", "0.003", "-s", "1200"))
        assert " 0% packet loss" in out
        assert "segments" in request(ctl, {"cmd": "stats"})  # the control socket still answers
    finally:
        stuck.close()
    # its subscription went with it: another client traces at once
    got = _streaming(a, "trace", "--live", "--control", ctl, "--count", "1", "--timeout", "5")
    ping(a, OB, count=1)
    _, err = got.communicate(timeout=20)
    assert got.returncode == 0 and b"1 packets traced" in err, err
    assert v.stop() == 0
