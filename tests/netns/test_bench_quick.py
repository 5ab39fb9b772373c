"""The benchmark harness works (CI checks the harness, not the speed): both parts in --quick."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.e2e import BUSY_POLL_US, PAIRS
from vxlanpy.config import ADAPTIVE_POLL_US
from vxlanpy.io import tgso
from vxlanpy.netns import Topology

pytestmark = pytest.mark.alone  # make test runs it after the parallel part (see Makefile)

ROOT = Path(__file__).resolve().parents[2]


# one pair of each kind (the reference, vxlanpy with the kernel and with itself, a variant's
# flags, OVS, the naive forwarders in Python and C); the other variants only add flags (CI time)
QUICK_PAIRS = (
    "kernel-kernel",
    "vxlanpy-kernel",
    "vxlanpy_dgram-kernel",
    "vxlanpy-vxlanpy",
    "ovs-kernel",
    "cfwd-kernel",
    "naive-naive",
)


def test_e2e_quick(topo: Topology, tmp_path: Path) -> None:
    # `topo` only gates on privileges (skip, or fail under CI=true); the harness builds its own.
    assert set(QUICK_PAIRS) <= set(PAIRS)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "e2e",
            "--quick",
            "--pairs",
            ",".join(QUICK_PAIRS),
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    data = json.loads((tmp_path / "benchmarks.json").read_text())
    pairs = set(data["summary"])
    assert pairs == set(QUICK_PAIRS)  # every pair ran: kernel, vxlanpy variants, naive
    assert {"kernel-kernel", "vxlanpy-kernel", "naive-naive"} <= pairs
    for pair, metrics in data["summary"].items():
        assert metrics["tcp1"]["median"] > 0, pair
        assert metrics["rtt_p50"]["median"] > 0, pair
        assert metrics["udp64_lossfree"]["median"] is not None, pair
        if pair != "kernel-kernel":
            assert metrics["tcp1"]["ratio"] > 0, pair
        # the host's steal time while the pair ran: a share, with no ratio to the kernel's
        assert 0 <= metrics["steal"]["median"] <= 100, pair
        assert metrics["steal"]["ratio"] is None, pair
    md = (tmp_path / "benchmarks.md").read_text()
    assert "| TCP 1 stream a->b [Gbit/s] |" in md and "×" in md
    assert "| ping RTT p50 added to kernel-kernel's [us] |" in md
    assert "| host's steal time during the pair [% of CPU time] |" in md
    assert 0 <= float(data["machine"]["steal"]) <= 100
    # whether the default's tunnel GSO could work here is said beside the figures
    assert data["machine"]["tunnel_gso"] == (tgso.probe() or "yes")
    assert f"UDP-tunnel GSO on TAPs: {data['machine']['tunnel_gso']}" in md
    assert f"Host's steal time over the run: {data['machine']['steal']} %" in md
    assert "Ping: 20 echo requests not counted (caches, the first upcalls),\nthen 20," in md
    assert "{" not in md.split("Pairs: ", 1)[1]  # the notes' template filled in
    assert f"polls up to {ADAPTIVE_POLL_US} µs while packets" in md  # the default, not a copy
    assert f"`--busy-poll {BUSY_POLL_US}`" in md
    assert (tmp_path / "benchmarks.png").stat().st_size > 1000
    assert f"[{len(QUICK_PAIRS)}/{len(QUICK_PAIRS)}] naive-naive" in p.stderr  # progress was shown
    # where 64-byte UDP was lost: every pair's counters, iperf3's own count among them
    where = data["where_lost"]
    assert set(where["full"]) == pairs
    for pair, runs in where["full"].items():
        assert all("iperf3: lost (b's count)" in r for r in runs), pair
        assert all(v >= 0 for r in runs for v in r.values()), pair  # counters only grow
    assert "Where 64-byte UDP a->b was lost, at full rate" in md


def test_micro_quick(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks", "micro", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        # under an xdist worker pytest-benchmark would turn itself off in the child's pytest
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    data = json.loads((tmp_path / "micro.json").read_text())
    names = {b["name"] for b in data["benchmarks"]}
    assert "test_pack_batch[cffi]" in names and "test_fdb_lookup[10000]" in names
    assert all("data" not in b["stats"] for b in data["benchmarks"])  # no raw timings kept
    md = (tmp_path / "micro.md").read_text()
    assert "ns/frame" in md
