"""``vxlanpy-tunnel run`` refuses bad input with one line on stderr and the documented exit code:
2 for a bad command line or configuration, 1 for runtime errors (TAP name taken, port in use,
no privileges). Every case runs inside a fresh namespace, so that a CLI that wrongly went ahead
could not touch the host; after each error no TAP may be left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Vxlanpy

from vxlanpy.netns import Host, Topology, wait_for

REPO = str(Path(__file__).resolve().parents[2])
PREFIX = "vxlanpy-tunnel: error: "


def _links(h: Host) -> set[str]:
    """Interface names in the namespace (``ip -o link`` lines are ``N: name[@peer]: ...``)."""
    out = h.ip("-o", "link", "show")
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line}


def _run(h: Host, *args: str, wrap: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run the CLI in ``h``'s namespace; a CLI that wrongly keeps running is killed after 20 s
    (TimeoutExpired fails the test)."""
    argv = ["ip", "netns", "exec", h.ns, *wrap, sys.executable, "-m", "vxlanpy.cli", "run", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=REPO)


def _assert_error(p: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    lines = p.stderr.splitlines()
    assert p.returncode == code, (p.returncode, p.stderr)
    assert len(lines) == 1, f"expected one stderr line, got:\n{p.stderr}"
    line = lines[0]
    assert line.startswith(PREFIX), line
    low = line.lower()
    assert any(n.lower() in low for n in needles), (needles, line)
    assert p.stdout == ""
    return line


@pytest.fixture
def ns(topo: Topology) -> Host:
    return topo.add_host("cli")


USAGE = [
    pytest.param(["--vni", "5", "--tap", "vx0", "--bogus"], ["--bogus"], id="unknown-flag"),
    pytest.param(
        ["--vni", "5", "--tap", "vx0", "--fdb", "02:00:00:00:zz:01=198.18.0.2"],
        ["not a MAC"],
        id="bad-mac-in-fdb",
    ),
    pytest.param(
        ["--vni", "5", "--tap", "vx0", "--remote", "198.18.0.300"],
        ["198.18.0.300"],
        id="bad-remote-ip",
    ),
    pytest.param(
        ["--vni", "5", "--tap", "vx0", "--address", "198.19.0.1/33"],
        ["198.19.0.1/33"],
        id="bad-cidr",
    ),
    pytest.param(
        ["--vni", "5", "--tap", "vx0", "--address", "198.19.0.1"],
        ["prefix"],
        id="address-without-prefix",
    ),
    pytest.param(["--vni", "16777216", "--tap", "vx0"], ["VNI"], id="vni-out-of-range"),
    pytest.param(["--vni", "-1", "--tap", "vx0"], ["VNI"], id="vni-negative"),
    pytest.param(
        ["--vni", "5", "--tap", "vx0", "--srcport", "60000:50000"],
        ["srcport"],
        id="srcport-min-gt-max",
    ),
]


@pytest.mark.parametrize(("args", "needles"), USAGE)
def test_usage_errors_exit_2(ns: Host, args: list[str], needles: list[str]) -> None:
    before = _links(ns)
    _assert_error(_run(ns, *args), 2, *needles)
    assert _links(ns) == before  # nothing was created


def test_tap_name_taken_exits_1(ns: Host) -> None:
    # the dummy driver may be missing: any link type will do to occupy the name
    ns.ip("link", "add", "vx0", "type", "bridge")
    before = _links(ns)
    _assert_error(_run(ns, "--vni", "5", "--tap", "vx0"), 1, "vx0")
    assert _links(ns) == before
    # the existing device is untouched (not deleted, not turned into a TAP)
    assert "bridge" in ns.ip("-d", "-o", "link", "show", "vx0")


def test_port_in_use_exits_1(topo: Topology, ns: Host) -> None:
    holder = ns.popen(
        [sys.executable, "-c", _HOLD_PORT, "4789"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"bound", holder.stderr
        before = _links(ns)
        _assert_error(_run(ns, "--vni", "5", "--tap", "vx0"), 1, "4789", "in use")
        # the TAP is created before the socket: it must have been removed again
        assert _links(ns) == before
        assert "vx0" not in before
    finally:
        topo.stop(holder)
        for f in (holder.stdout, holder.stderr):
            if f is not None:
                f.close()


_HOLD_PORT = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", int(sys.argv[1])))
print("bound", flush=True)
time.sleep(30)
"""


def test_not_root_exits_1(ns: Host) -> None:
    before = _links(ns)
    nobody = ("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups")
    line = _assert_error(_run(ns, "--vni", "5", "--tap", "vx0", wrap=nobody), 1, "root")
    assert "CAP_NET_ADMIN" in line
    assert _links(ns) == before


def test_error_leaves_no_tap_and_name_is_reusable(topo: Topology, ns: Host) -> None:
    """After a runtime error the same TAP name can be used at once (nothing half-created)."""
    holder = ns.popen([sys.executable, "-c", _HOLD_PORT, "4789"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"bound"
        _assert_error(_run(ns, "--vni", "5", "--tap", "vx0"), 1, "in use")
    finally:
        topo.stop(holder)
        if holder.stdout is not None:
            holder.stdout.close()
    v = Vxlanpy(topo, ns, ["--vni", "5", "--tap", "vx0"])  # waits for "listening on"
    assert "tun" in ns.ip("-d", "-o", "link", "show", "vx0")
    assert v.stop() == 0, v.lines
    assert wait_for(lambda: "vx0" not in _links(ns), 5)


def test_second_vtep_on_the_same_port_exits_1(topo: Topology, ns: Host) -> None:
    """A second VTEP may not bind the port of a running one (it would take its traffic)."""
    first = Vxlanpy(topo, ns, ["--vni", "5", "--tap", "vx0"])
    try:
        p = _run(
            ns, "--vni", "6", "--tap", "vx1", "--control", f"/run/vxlanpy/second-{topo.tag}.sock"
        )
        _assert_error(p, 1, "4789", "in use")
        assert "vx1" not in _links(ns)
        assert first.proc.poll() is None  # the first one is untouched
    finally:
        assert first.stop() == 0


def test_config_with_vtep_flags_exits_2(ns: Host, tmp_path: Path) -> None:
    cfg = tmp_path / "vtep.toml"
    cfg.write_text('[[segment]]\nvni = 5\ntap = "vx0"\n')
    p = _run(ns, "--config", str(cfg), "--dstport", "9999", "--proxy")
    _assert_error(p, 2, "--dstport, --proxy")
    assert "vx0" not in _links(ns)
