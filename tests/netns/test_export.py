"""``vxlanpy-tunnel export``: the iproute2 commands it prints build a kernel VTEP that talks to
a vxlanpy VTEP configured the same way. B is built only from the exported commands (run in
B's namespace); A runs vxlanpy from its own config file."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from conftest import Vxlanpy, ping, tcp_transfer

from vxlanpy.netns import Host, Topology

REPO = str(Path(__file__).resolve().parents[2])
UA, UB = "198.18.0.1", "198.18.0.2"
MAC_A = "02:00:00:00:2a:01"  # vxlanpy's TAP, so that B can hold static entries for it

CONFIG_B = f"""\
[vtep]
local = "{UB}"

[[segment]]
vni = 42
tap = "vx42"
address = "198.19.0.2/24"
remotes = ["{UA}"]
ageing = 120
fdb = [{{ mac = "{MAC_A}", dst = "{UA}" }}]
neigh = [{{ ip = "198.19.0.1", lladdr = "{MAC_A}" }}]
"""

CONFIG_A = """\
[vtep]
local = "{ua}"
control = "{sock}"

[[segment]]
vni = 42
tap = "vx42"
address = "198.19.0.1/24"
mac = "{mac}"
remotes = ["{ub}"]
ageing = 120
"""


def _export(*args: str) -> list[str]:
    p = subprocess.run(
        [sys.executable, "-m", "vxlanpy.cli", "export", *args],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=REPO,
    )
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    return p.stdout.splitlines()


def _apply(h: Host, commands: list[str]) -> None:
    for cmd in commands:
        argv = shlex.split(cmd)
        assert argv[0] in ("ip", "bridge"), cmd  # only iproute2, and only inside B
        h.sh(*argv)


def test_exported_kernel_vtep_talks_to_vxlanpy(topo: Topology, tmp_path: Path) -> None:
    cfg_b = tmp_path / "b.toml"
    cfg_b.write_text(CONFIG_B)
    cmds = _export("--config", str(cfg_b))
    link_b = f"ip link add vx42 type vxlan id 42 dstport 4789 local {UB} srcport 49152 65535"
    assert cmds[0] == f"{link_b} ageing 120"
    assert f"bridge fdb append 00:00:00:00:00:00 dev vx42 dst {UA}" in cmds
    assert f"bridge fdb append {MAC_A} dev vx42 dst {UA}" in cmds
    assert f"ip neigh add 198.19.0.1 lladdr {MAC_A} dev vx42 nud permanent" in cmds
    assert "ip addr add 198.19.0.2/24 dev vx42" in cmds
    assert "ip link set vx42 up" in cmds

    a = topo.add_host("a")
    b = topo.add_host("b")
    topo.link(a, b, f"{UA}/24", f"{UB}/24")
    _apply(b, cmds)
    details = b.ip("-d", "link", "show", "vx42")
    assert "vxlan id 42" in details and f"local {UB}" in details and "dstport 4789" in details
    fdb = b.sh("bridge", "fdb", "show", "dev", "vx42")
    assert f"00:00:00:00:00:00 dst {UA}" in fdb and f"{MAC_A} dst {UA}" in fdb
    assert "PERMANENT" in b.ip("neigh", "show", "198.19.0.1", "dev", "vx42")

    sock = str(tmp_path / "a.sock")
    cfg_a = tmp_path / "a.toml"
    cfg_a.write_text(CONFIG_A.format(ua=UA, ub=UB, sock=sock, mac=MAC_A))
    v = Vxlanpy(topo, a, ["--config", str(cfg_a)])
    assert a.sh("cat", "/sys/class/net/vx42/address").strip() == MAC_A
    ping(a, "198.19.0.2")
    ping(b, "198.19.0.1")
    tcp_transfer(a, b, "198.19.0.2", 2_000_000)
    tcp_transfer(b, a, "198.19.0.1", 2_000_000, port=5002)

    # export from the running VTEP: the same device line as from A's file
    live = _export("--control", sock)
    from_file = _export("--config", str(cfg_a))
    link_a = f"ip link add vx42 type vxlan id 42 dstport 4789 local {UA} srcport 49152 65535"
    assert live[0] == from_file[0] == f"{link_a} ageing 120"
    # the flood list, the MAC and the address survive too; the live MTU is the TAP's
    for line in (
        f"bridge fdb append 00:00:00:00:00:00 dev vx42 dst {UB}",
        f"ip link set vx42 address {MAC_A}",
        "ip addr add 198.19.0.1/24 dev vx42",
        "ip link set vx42 up",
    ):
        assert line in live and line in from_file, (line, live, from_file)
    assert "ip link set vx42 mtu 1450" in live
    assert v.stop() == 0, v.lines


def test_export_needs_exactly_one_source(tmp_path: Path) -> None:
    for args in ([], ["--config", str(tmp_path / "x.toml"), "--control", str(tmp_path / "s")]):
        p = subprocess.run(
            [sys.executable, "-m", "vxlanpy.cli", "export", *args],
            capture_output=True,
            text=True,
            timeout=20,
            cwd=REPO,
        )
        assert p.returncode == 2, p.stderr
        assert len(p.stderr.splitlines()) == 1 and "exactly one" in p.stderr


def test_exported_outer_header_settings(topo: Topology, tmp_path: Path) -> None:
    """tos/ttl/df reach the kernel device as configured (ip reads a TOS number as hex)."""
    h = topo.add_host("x")
    for n, vtep in enumerate(
        ['tos = 16\nttl = 9\ndf = "set"', 'tos = "inherit"\nttl = "inherit"\ndf = "inherit"']
    ):
        cfg = tmp_path / f"o{n}.toml"
        cfg.write_text(f'[vtep]\n{vtep}\n[[segment]]\nvni = {n + 1}\ntap = "e{n}"\n')
        _apply(h, [c for c in _export("--config", str(cfg)) if c.startswith("ip link add")])
        words = h.ip("-d", "link", "show", f"e{n}").split()
        got = {k: words[words.index(k) + 1] for k in ("tos", "ttl", "df")}
        want = [("0x10", "9", "set"), ("inherit", "inherit", "inherit")][n]
        assert (got["tos"], got["ttl"], got["df"]) == want, words
