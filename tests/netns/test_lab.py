"""``vxlanpy-tunnel lab``: builds its namespaces, passes its own checks, and leaves nothing
behind (no namespace, no vxlanpy process, no file in /run/vxlanpy); ``--keep`` then
``--stop TAG`` does the same in two steps.

The lab is run as a subprocess with a time limit. Should it hang, it gets SIGINT (its own
teardown), then SIGKILL; whatever carries its tag is then removed here: namespaces by exact
name, processes by PID (only those whose command line names this lab's socket).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vxlanpy.control import DEFAULT_DIR
from vxlanpy.netns import have_netns, wait_for

REPO = str(Path(__file__).resolve().parents[2])
TIMEOUT = 90


@pytest.fixture
def root() -> None:
    """Same policy as the ``topo`` fixture: skip without privileges, fail under CI=true."""
    if not have_netns():
        msg = "needs root, iproute2 and /dev/net/tun to build network namespaces"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true but {msg}")
        pytest.skip(msg)


def _namespaces(tag: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(f"vxp-{tag}-")]


def _lab_pids(tag: str) -> list[int]:
    """vxlanpy processes of this lab: their command line names /run/vxlanpy/lab-TAG-..."""
    mark = f"lab-{tag}-".encode()
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if mark in cmd and b"vxlanpy.cli" in cmd:
            pids.append(int(d))
    return pids


def _lab_files(tag: str) -> list[str]:
    try:
        return sorted(f for f in os.listdir(DEFAULT_DIR) if f.startswith(f"lab-{tag}"))
    except OSError:
        return []


def _leftovers(tag: str) -> dict[str, list[object]]:
    return {
        "namespaces": list(_namespaces(tag)),
        "processes": list(_lab_pids(tag)),
        "files": list(_lab_files(tag)),
    }


def _clean(tag: str) -> None:
    """Remove whatever this lab left (only things that carry its tag)."""
    for pid in _lab_pids(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for ns in _namespaces(tag):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
    for f in _lab_files(tag):
        try:
            os.unlink(os.path.join(DEFAULT_DIR, f))
        except OSError:
            pass


class Lab:
    """Runs ``vxlanpy-tunnel lab ...`` and remembers its tag for the clean-up."""

    def __init__(self) -> None:
        self.tags: list[str] = []

    def run(self, *args: str) -> tuple[int, str, str]:
        p = subprocess.Popen(
            [sys.executable, "-m", "vxlanpy.cli", "lab", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        try:
            out, err = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGINT)  # the lab tears down on Ctrl-C
            try:
                out, err = p.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate(timeout=10)
            self._remember(out)
            pytest.fail(f"lab {' '.join(args)} did not finish in {TIMEOUT} s:\n{out}\n{err}")
        self._remember(out)
        return p.returncode, out, err

    def _remember(self, out: str | None) -> None:
        m = re.search(r"\(tag ([0-9a-f]+)\)", (out or "").split("\n", 1)[0])
        if m:
            self.tags.append(m.group(1))


@pytest.fixture
def lab(root: None) -> Iterator[Lab]:
    lab = Lab()
    try:
        yield lab
    finally:
        for tag in lab.tags:
            _clean(tag)


def _tag(out: str) -> str:
    first = out.splitlines()[0]
    m = re.search(r"\(tag ([0-9a-f]+)\)", first)
    assert m, first
    return m.group(1)


def _check_report(out: str, hosts: int) -> None:
    losses = re.findall(r"^ +(h\d) -> (h\d) \(198\.19\.0\.\d\): (\S+)% loss", out, re.M)
    assert len(losses) == 2 * (hosts - 1), out
    assert all(loss == "0" for _, _, loss in losses), out
    rates = re.findall(r"h1 -> h2: (\d+) Mbit/s;  h2 -> h1: (\d+) Mbit/s", out)
    assert len(rates) == 1 and all(int(r) > 0 for r in rates[0]), out
    assert "vxlanpy-tunnel fdb show:" in out
    rows = re.findall(r"^ +(\S+) dev vx0 dst (198\.18\.0\.\d) vni 120 self (.+)$", out, re.M)
    assert ("00:00:00:00:00:00", "198.18.0.2", "permanent") in rows, out
    assert any(r[0] != "00:00:00:00:00:00" and r[2].startswith("age ") for r in rows), out
    assert "vni 120: rx " in out


def _assert_gone(tag: str) -> None:
    # the lab's processes were sent SIGTERM: give them a moment to exit
    wait_for(lambda: not _lab_pids(tag), 5)
    assert _leftovers(tag) == {"namespaces": [], "processes": [], "files": []}


def test_lab_kernel_peer(lab: Lab) -> None:
    code, out, err = lab.run("--seconds", "1")
    assert code == 0, out + err
    tag = _tag(out)
    _check_report(out, hosts=2)
    assert "kernel vxlan on h2" in out
    assert "(kernel) bridge fdb show dev vx0:" in out
    assert out.rstrip().endswith("done: no namespace, link or process left behind"), out
    _assert_gone(tag)


def test_lab_three_vxlanpy_hosts(lab: Lab) -> None:
    code, out, err = lab.run("--hosts", "3", "--peer", "vxlanpy", "--seconds", "1")
    assert code == 0, out + err
    tag = _tag(out)
    _check_report(out, hosts=3)
    assert out.count("vxlanpy-tunnel: listening on") == 3, out
    # every vxlanpy host floods to both others
    for n in (1, 2, 3):
        assert f"h{n} (vxlanpy) vxlanpy-tunnel fdb show:" in out
    assert "done: no namespace" in out
    _assert_gone(tag)


def test_lab_keep_then_stop(lab: Lab) -> None:
    code, out, err = lab.run("--seconds", "1", "--keep")
    assert code == 0, out + err
    tag = _tag(out)
    assert "done: no namespace" not in out
    assert f"vxlanpy-tunnel lab --stop {tag}" in out
    # the lab is still up: namespaces, the vxlanpy process, its socket, the state file
    assert sorted(_namespaces(tag)) == [f"vxp-{tag}-h1", f"vxp-{tag}-h2"]
    assert len(_lab_pids(tag)) == 1
    files = _lab_files(tag)
    assert f"lab-{tag}.json" in files and f"lab-{tag}-h1.sock" in files, files
    ping = subprocess.run(
        ["ip", "netns", "exec", f"vxp-{tag}-h1", "ping", "-c", "2", "-i", "0.2", "-W", "2"]
        + ["198.19.0.2"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert " 0% packet loss" in ping.stdout, ping.stdout

    code, out, err = lab.run("--stop", tag)
    assert code == 0, out + err
    assert f"lab {tag} removed" in out
    _assert_gone(tag)

    code, out, err = lab.run("--stop", tag)  # a second stop finds nothing
    assert code == 1 and "no kept lab" in out
