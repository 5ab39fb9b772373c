"""The scaling benchmark's harness works (CI checks the harness, not the speed): its --quick
mode writes the JSON, table and plot, with positive figures that agree with each other."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.scale import QUICK
from vxlanpy.netns import Topology

pytestmark = pytest.mark.alone  # make test runs it after the parallel part (see Makefile)

ROOT = Path(__file__).resolve().parents[2]


def test_scale_quick(topo: Topology, tmp_path: Path) -> None:
    # `topo` only gates on privileges (skip, or fail under CI=true); the harness builds its own.
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks", "scale", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    data = json.loads((tmp_path / "scale.json").read_text())
    assert data["quick"] and data["reps"] == 1
    assert [r["vnis"] for r in data["vnis"]] == list(QUICK["vnis"])
    assert [r["remotes"] for r in data["flood"]] == list(QUICK["remotes"])
    assert [r["entries"] for r in data["fdb"]] == list(QUICK["fdb"])
    assert [r["flows"] for r in data["flows"]] == list(QUICK["flows"])

    def forwarded(m: dict[str, float], copies: int = 1) -> None:
        """What the sender wrote, vxlanpy sent and the kernel peer received agree."""
        assert m["sent"] > 0 and m["seconds"] > 0 and m["cpu_s"] >= 0
        assert m["tx_packets"] > 0 and m["peer_rx"] > 0 and m["peer_kpps"] > 0
        # every frame the TAP accepted was forwarded (nothing left in its queue) or counted as
        # lost after it (a refused send), give or take a stray TCP segment of the iperf3 test
        after_tap = m["lost"] - m["tap_queue"]
        assert m["sent"] * copies <= m["tx_packets"] + after_tap
        assert m["tx_packets"] <= (m["sent"] + 8) * copies
        # the peer got no more than was sent, and lost at most a little on the way
        assert 0.9 * m["tx_packets"] <= m["peer_rx"] <= m["tx_packets"]

    for row in data["vnis"]:
        assert len(row["reps"]) == 1 and row["rss_kb_idle"] > 0
        r = row["reps"][0]
        assert r["tcp_gbps"] > 0
        for kind in ("udp64", "udp1400"):
            forwarded(r[kind])
            assert r[kind]["floods"] == 0 and r[kind]["l2_misses"] == 0  # every frame hit
        # bytes at the peer (rx_bytes: the inner frames without their Ethernet header): IPv4
        # packets of 92 and 1428 bytes
        assert r["udp64"]["peer_rx_bytes"] == 92 * r["udp64"]["peer_rx"]
        assert r["udp1400"]["peer_rx_bytes"] == 1428 * r["udp1400"]["peer_rx"]
    for row in data["flood"]:
        n = row["remotes"]
        for kind in ("bcast", "unknown"):
            m = row["reps"][0][kind]
            assert m["floods"] == m["sent"] > 0  # each frame flooded once ...
            forwarded(m, copies=n)  # ... as one copy per remote: copies = frames x remotes
            assert m["frames_kpps"] > 0
        assert row["reps"][0]["unknown"]["l2_misses"] == row["reps"][0]["unknown"]["sent"]
        assert row["reps"][0]["bcast"]["l2_misses"] == 0
    for row in data["fdb"]:
        assert row["rss_kb_installed"] >= row["rss_kb_start"] > 0 and row["add_s"] >= 0
        m = row["reps"][0]["udp64"]
        forwarded(m)
        assert m["l2_misses"] == 0 and m["floods"] == 0  # every destination is in the table
    for row in data["flows"]:
        forwarded(row["reps"][0]["udp64"])

    # the kernel in a's place, same sweeps: frames at the peer = frames x remotes too
    kernel = data["kernel"]
    assert [r["vnis"] for r in kernel["vnis"]] == list(QUICK["vnis"])
    for row in kernel["vnis"]:
        assert row["reps"][0]["tcp_gbps"] > 0
        forwarded(row["reps"][0]["udp64"])
    for row in kernel["flood"]:
        forwarded(row["reps"][0]["bcast"], copies=row["remotes"])
    for row in kernel["fdb"]:
        forwarded(row["reps"][0]["udp64"])

    s = data["summary"]
    assert s["memory"]["vtep_kb"] > 0 and s["memory"]["fdb_rss_kb"] > 0
    for row in s["vnis"] + s["fdb"] + s["flows"]:
        assert row["udp64_kpps"]["median"] > 0 and row["udp64_us"]["median"] > 0
    for row in s["flood"]:
        assert row["bcast_copies_kpps"]["median"] > 0
    md = (tmp_path / "scale.md").read_text()
    assert "| VNIs | VTEP | TCP, 4 streams [Gbit/s] |" in md and "| remotes | VTEP |" in md
    assert "| FDB entries | VTEP |" in md and "| flows (outer source ports) |" in md
    assert "Memory of vxlanpy (VmRSS): per VTEP" in md and "| kernel |" in md
    assert (tmp_path / "scale.png").stat().st_size > 1000
