"""``run --user nobody --group nogroup`` (black box): the VTEP switches away from root once its
TAP and sockets are open, keeping only what it still needs, and goes on forwarding (ping to a
kernel peer, new flows opening send sockets with forced buffer sizes after the switch), serving
its control socket (in the namespace's default directory, under the root-only /run/vxlanpy),
and exits cleanly (TAP and control socket removed)."""

from __future__ import annotations

import json
import os
import pwd
import sys
from pathlib import Path

from conftest import Vxlanpy, ping
from test_control import OB, UA, UB, VNI, _cli, _ok, _pair

from vxlanpy.control import DEFAULT_DIR
from vxlanpy.io.tgso import probe
from vxlanpy.netns import Topology, wait_for
from vxlanpy.privdrop import CAP_NET_ADMIN, needed_capabilities

SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in range(2000, 2040):  # 40 inner flows: new outer source ports, new send sockets
    s.sendto(b"x" * 100, (sys.argv[1], port))
"""


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _send_buffers(ss: str, pid: int) -> list[int]:
    """Send buffer sizes (``tb`` of ``ss -m``) of the process's UDP sockets but the receiving
    one (port 4789); each socket's line is followed by its ``skmem`` line."""
    out, ours = [], False
    for line in ss.splitlines():
        if "skmem:(" in line and ours:
            out.append(int(line.split(",tb")[1].split(",")[0]))
        elif "skmem:(" not in line:
            ours = f"pid={pid}," in line and f"{UA}:4789 " not in line
    return out


def _config(tmp_path: Path, user: str) -> str:
    p = tmp_path / "vtep.toml"
    p.write_text(
        f'[vtep]\nlocal = "{UA}"\nuser = "{user}"\n\n'
        f'[[segment]]\nvni = {VNI}\ntap = "vx0"\naddress = "198.19.0.1/24"\nremotes = ["{UB}"]\n'
    )
    return str(p)


def test_runs_as_the_given_user(topo: Topology, tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    a, b = _pair(topo)
    sock = os.path.join(DEFAULT_DIR, f"netns-{a.ns}", "vx0.sock")
    v = Vxlanpy(topo, a, ["--config", _config(tmp_path, "nobody"), "--user", "nobody:nogroup"])
    pid = v.proc.pid
    keep = needed_capabilities(8 << 20, 49152)
    st = _status(pid)
    assert st["Uid"].split() == [str(nobody.pw_uid)] * 4, st["Uid"]
    assert st["Gid"].split() == ["65534"] * 4, st["Gid"]
    assert st["Groups"] == ""
    mask = sum(1 << c for c in keep)
    assert int(st["CapEff"], 16) == mask and int(st["CapPrm"], 16) == mask, st
    assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0
    assert any("running as user nobody (uid 65534, gid 65534)" in line for line in v.lines)
    print(f"vxlanpy as nobody: CapEff {st['CapEff']} ({sorted(keep)}), {v.lines[-1]}")

    # traffic both ways with a kernel peer, and new flows after the switch
    ping(a, OB, count=3)
    a.sh(sys.executable, "-c", SENDER, OB)
    ss = a.sh("ss", "-uanmp")
    ours = [line for line in ss.split("\n") if f"pid={pid}," in line]
    assert len(ours) >= 20, ss  # the receive socket, the fallback, one per new source port
    if CAP_NET_ADMIN in keep:  # SO_SNDBUFFORCE still works: 8 MiB, doubled by the kernel
        bufs = _send_buffers(ss, pid)
        assert len(bufs) >= 20 and min(bufs) >= 16 << 20, bufs

    # control: the socket is the user's, in its root-only directory tree, and serves root
    assert os.stat(sock).st_uid == nobody.pw_uid
    assert os.stat(DEFAULT_DIR).st_mode & 0o777 == 0o700
    lines = _ok(a, "fdb", "show").splitlines()
    assert any(line.endswith("self permanent") and UB in line for line in lines), lines
    assert any(" age " in line for line in lines), lines  # the peer's MAC was learned
    stats = json.loads(_ok(a, "stats", "--json"))
    assert stats["segments"][str(VNI)]["rx_packets"] >= 3
    assert _ok(a, "fdb", "add", "02:00:00:00:00:77", "dst", UB) == ""

    # tunnel GSO (auto) after the switch: a firewall table added now is read back (by the loop's
    # thread, which kept CAP_NET_ADMIN if anything did) or, without the capability, withholds
    # the links for good; either way none stays linked while the table is there
    if probe() is None:
        tg = lambda: json.loads(_ok(a, "stats", "--json"))["tunnel_gso"]  # noqa: E731
        assert wait_for(lambda: tg()["remotes_linked"] == 1, 5), tg()
        a.sh("nft", "add table inet vxpd; add chain inet vxpd o { type filter hook output "
             "priority 0; }; add rule inet vxpd o counter")  # fmt: skip
        want = "nftables: chain inet vxpd o" if CAP_NET_ADMIN in keep else "cannot read"
        assert wait_for(lambda: str(tg()["why_not"]).startswith(want), 3), tg()
        assert tg()["remotes_linked"] == 0
        a.sh("nft", "delete", "table", "inet", "vxpd")
        if CAP_NET_ADMIN in keep:
            assert wait_for(lambda: tg()["remotes_linked"] == 1, 5), tg()

    assert v.stop() == 0, v.lines
    assert not os.path.exists(sock), "control socket left behind"
    os.rmdir(os.path.dirname(sock))  # empty; nobody could not remove it from /run/vxlanpy
    assert "vx0" not in a.ip("-br", "link", "show"), "TAP left behind"
    assert not any("Traceback" in line or "error:" in line for line in v.lines), v.lines


def test_user_and_group_errors(topo: Topology, tmp_path: Path) -> None:
    a = topo.add_host("a")
    base = ["run", "--vni", "1", "--tap", "vx0"]
    for extra, msg in (
        (["--user", "no-such-user-here"], "user 'no-such-user-here' does not exist"),
        (["--user", "nobody:no-such-group"], "group 'no-such-group' does not exist"),
        (["--user", ":nogroup"], "--user must be USER[:GROUP], got ':nogroup'"),
        (["--user", "root"], "user is root: nothing to drop"),
    ):
        p = _cli(a, *base, *extra)
        assert p.returncode == 2, (extra, p.stderr)
        assert p.stderr.strip().splitlines() == [f"vxlanpy-tunnel: error: {msg}"] or (
            p.stderr.startswith(f"vxlanpy-tunnel: error: {msg}")
        ), p.stderr
    bad = tmp_path / "bad.toml"
    for text, msg in (
        ("user = true", "[vtep].user must be a user name or uid, got True"),
        ('group = "nogroup"', "group needs user (the user to run as)"),
    ):
        bad.write_text(f"[vtep]\n{text}\n[[segment]]\nvni = 1\n")
        p = _cli(a, "run", "--config", str(bad))
        assert p.returncode == 2
        assert p.stderr.startswith("vxlanpy-tunnel: error: ") and msg in p.stderr, p.stderr
