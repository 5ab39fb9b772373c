"""``vxlanpy-tunnel lab --control-plane etcd --hosts 3``: a flannel network with one vxlanpy and
two kernel hosts on etcd passes its own checks and leaves no namespace behind."""

from __future__ import annotations

import re
import subprocess
import sys

from flannel_net import need_netns


def _lab(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "vxlanpy.cli", "lab", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_flannel_lab_three_hosts() -> None:
    need_netns()
    p = _lab("--control-plane", "etcd", "--hosts", "3", "--seconds", "1")
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert out.count(": ok, rtt") == 6, out  # every container to every other
    assert re.search(r"c1 -> c2: \d+ Mbit/s", out), out
    for h in ("h1 (vxlanpy)", "h2 (kernel)", "h3 (kernel)"):
        assert h in out
    assert out.count(" onlink") == 6 and out.count(" PERMANENT") == 6, out
    assert out.count('"BackendType":"vxlan"') == 3, out
    tag = re.search(r"\(tag (\w+)\)", out)
    assert tag is not None and "torn down" in out
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"vxp-{tag.group(1)}-" not in left


def test_lab_host_counts() -> None:
    p = _lab("--control-plane", "etcd", "--hosts", "1")
    assert p.returncode == 2 and "with --control-plane etcd, 2..20, got 1" in p.stderr
    p = _lab("--hosts", "4")
    assert p.returncode == 2 and "invalid choice: 4 (choose from 2, 3)" in p.stderr
