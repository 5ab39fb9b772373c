"""The control socket of a running VTEP, driven with the CLI client inside the namespace
(``ip netns exec NS vxlanpy-tunnel fdb|neigh|stats|events ...``) against a kernel peer.

IPv6 is switched off in both namespaces before any device exists, so the only frames on the
overlay are the ones the test causes (no MLD or router solicitation teaches vxlanpy a MAC
before the test looks).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Vxlanpy, ping

from vxlanpy.control import request
from vxlanpy.netns import Host, Topology, wait_for

REPO = str(Path(__file__).resolve().parents[2])
UA, UB = "198.18.0.1", "198.18.0.2"
OA, OB = "198.19.0.1", "198.19.0.2"
VNI = 42
ZERO = "00:00:00:00:00:00"
PREFIX = "vxlanpy-tunnel: error: "


def _cli(h: Host, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", h.ns, sys.executable, "-m", "vxlanpy.cli", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _ok(h: Host, *args: str) -> str:
    p = _cli(h, *args)
    assert p.returncode == 0, (args, p.returncode, p.stderr)
    assert p.stderr == "", p.stderr
    return p.stdout


def _fails(h: Host, *args: str, code: int = 1) -> str:
    """The client exits ``code`` with exactly one error line; returns that line."""
    p = _cli(h, *args)
    assert p.returncode == code, (args, p.returncode, p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(PREFIX), lines
    assert p.stdout == ""
    return lines[0]


def _reaches(h: Host, ip: str) -> bool:
    """One short, bounded ping run: True when at least one reply came back."""
    out = h.sh("ping", "-c", "2", "-i", "0.2", "-W", "1", ip, check=False)
    return " 100% packet loss" not in out and "packets transmitted" in out


def _mac(h: Host, dev: str) -> str:
    return h.sh("cat", f"/sys/class/net/{dev}/address").strip()


def _pair(topo: Topology) -> tuple[Host, Host]:
    a = topo.add_host("a")
    b = topo.add_host("b")
    a.no_ipv6()
    b.no_ipv6()
    dev = topo.link(a, b, f"{UA}/24", f"{UB}/24")
    topo.kernel_vxlan(b, vni=VNI, dev=dev, remote=UA, local=UB, address=f"{OB}/24")
    return a, b


def _vtep_args(sock: str, *extra: str) -> list[str]:
    return ["--vni", str(VNI), "--local", UA, "--tap", "vx0", "--address", f"{OA}/24"] + [
        "--control",
        sock,
        *extra,
    ]


@pytest.fixture
def learning(topo: Topology, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A learning VTEP with the peer in its flood list; control socket under tmp_path."""
    a, b = _pair(topo)
    sock = str(tmp_path / "a.sock")
    v = Vxlanpy(topo, a, _vtep_args(sock, "--remote", UB))
    yield a, b, v, sock
    assert v.stop() == 0, v.lines
    assert not os.path.exists(sock)  # removed on a clean exit


def test_fdb_show_after_learning(learning) -> None:  # type: ignore[no-untyped-def]
    a, b, v, sock = learning
    # before any traffic: only the flood entry
    assert _ok(a, "fdb", "show", "--control", sock).splitlines() == [
        f"{ZERO} dev vx0 dst {UB} vni {VNI} self permanent"
    ]
    ping(a, OB, count=2)
    peer = _mac(b, "vx0")
    lines = _ok(a, "fdb", "show", "--control", sock).splitlines()
    assert f"{ZERO} dev vx0 dst {UB} vni {VNI} self permanent" in lines
    learned = [line for line in lines if line.startswith(peer)]
    assert len(learned) == 1, lines
    head, _, age = learned[0].rpartition(" age ")
    assert head == f"{peer} dev vx0 dst {UB} vni {VNI} self"
    assert age.endswith("s") and 0 <= int(age[:-1]) <= 10, learned
    assert len(lines) == 2, lines

    rows = json.loads(_ok(a, "fdb", "show", "--json", "--control", sock))
    by_mac = {r["mac"]: r for r in rows}
    assert set(by_mac) == {ZERO, peer}
    assert by_mac[ZERO] == {
        "mac": ZERO,
        "dev": "vx0",
        "dst": UB,
        "port": None,
        "vni": VNI,
        "permanent": True,
        "age": None,
    }
    r = by_mac[peer]
    assert (r["dev"], r["dst"], r["vni"], r["permanent"]) == ("vx0", UB, VNI, False)
    assert isinstance(r["age"], int | float) and 0 <= r["age"] <= 10
    # --vni filters to one segment; the only one here gives the same rows
    assert len(json.loads(_ok(a, "fdb", "show", "--json", "--vni", str(VNI), "--control", sock)))
    # no neighbour entries without the proxy configured
    assert _ok(a, "neigh", "show", "--control", sock) == ""
    assert json.loads(_ok(a, "neigh", "show", "--json", "--control", sock)) == []


def test_stats_text_and_json(learning) -> None:  # type: ignore[no-untyped-def]
    a, b, v, sock = learning
    ping(a, OB, count=3)
    st = json.loads(_ok(a, "stats", "--json", "--control", sock))
    seg = st["segments"][str(VNI)]
    assert seg["rx_packets"] >= 3 and seg["tx_packets"] >= 3
    assert seg["rx_bytes"] > 0 and seg["tx_bytes"] > 0
    assert seg["learned"] == 1 and seg["floods"] >= 1
    assert set(st) >= {"segments", "unattributed", "socket_errors", "checksums_completed"}
    text = _ok(a, "stats", "--control", sock).splitlines()
    assert text[0].startswith(f"vni {VNI}: rx ") and " packets " in text[0], text
    assert "dropped" in text[0]
    assert "learned 1" in text[1] and "floods" in text[1], text
    assert any(line.startswith("checksums completed: ") for line in text), text


def _established(h: Host, path: str) -> int:
    """Connected (accepted + client) Unix stream sockets on ``path`` in ``h``'s namespace."""
    out = h.sh("ss", "-xH", "state", "established", check=False)
    return sum(path in line for line in out.splitlines())


def test_events_reports_learned(learning) -> None:  # type: ignore[no-untyped-def]
    a, b, v, sock = learning
    ev = a.popen(
        [sys.executable, "-m", "vxlanpy.cli", "events", "--count", "1", "--json"]
        + ["--control", sock],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        # the client is subscribed once its connection is up and the server has answered
        assert wait_for(lambda: _established(a, sock) > 0, 10), "events client did not connect"
        time.sleep(0.5)
        assert ev.poll() is None
        ping(a, OB, count=2)  # the peer's ARP reply teaches vxlanpy the peer's MAC
        out, err = ev.communicate(timeout=15)
    finally:
        if ev.poll() is None:
            ev.kill()
            ev.communicate(timeout=5)
    assert ev.returncode == 0, err
    lines = out.decode().splitlines()
    assert len(lines) == 1, lines
    got = json.loads(lines[0])
    assert got == {"event": "learned", "vni": VNI, "mac": _mac(b, "vx0"), "remote": UB}


def test_errors_and_protocol(learning) -> None:  # type: ignore[no-untyped-def]
    a, b, v, sock = learning
    line = _fails(a, "fdb", "show", "--vni", "7", "--control", sock)
    assert "VNI 7 is not configured" in line and "42" in line
    line = _fails(a, "fdb", "add", "02:00:00:zz:00:01", "dst", UB, "--control", sock)
    assert "02:00:00:zz:00:01" in line and "MAC" in line
    line = _fails(a, "fdb", "del", "02:00:00:00:00:99", "--control", sock)
    assert "02:00:00:00:00:99" in line and "not in the FDB" in line
    line = _fails(a, "fdb", "del", ZERO, "dst", "198.18.0.9", "--control", sock)
    assert "198.18.0.9" in line
    line = _fails(a, "fdb", "add", ZERO, "dst", UB, "--vni", "7", "--control", sock)
    assert "VNI 7" in line
    line = _fails(a, "neigh", "del", "198.19.0.77", "--control", sock)
    assert "198.19.0.77" in line
    line = _fails(a, "neigh", "add", OB, "lladdr", "zz", "--control", sock)
    assert "zz" in line
    # command-line mistakes are exit 2 and never reach the VTEP
    _fails(a, "fdb", "add", "--control", sock, code=2)
    _fails(a, "fdb", "add", "02:00:00:00:00:01", "via", UB, "--control", sock, code=2)
    # the failed requests changed nothing
    assert _ok(a, "fdb", "show", "--control", sock).splitlines() == [
        f"{ZERO} dev vx0 dst {UB} vni {VNI} self permanent"
    ]

    # the socket is root's only
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600

    # malformed lines written straight to the socket: refused, and the connection goes on
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(sock)
        f = s.makefile("rwb")
        for bad in (b"this is not json\n", b"[1, 2]\n", b'{"cmd": "reboot"}\n'):
            f.write(bad)
            f.flush()
            resp = json.loads(f.readline())
            assert resp["ok"] is False and resp["error"], (bad, resp)
        f.write(b'{"cmd": "stats"}\n')
        f.flush()
        resp = json.loads(f.readline())
        assert resp["ok"] is True and str(VNI) in resp["result"]["segments"]
        f.close()
    # ... and the server keeps serving new clients and traffic
    assert "vni 42:" in _ok(a, "stats", "--control", sock)
    ping(a, OB, count=2)

    # unreachable sockets: exit 1, one line
    gone = str(Path(sock).with_name("gone.sock"))
    line = _fails(a, "fdb", "show", "--control", gone)
    assert "cannot reach" in line and gone in line
    line = _fails(a, "stats", "--control", gone)
    assert "cannot reach" in line


def test_fdb_and_neigh_ops_on_live_traffic(topo: Topology, tmp_path: Path) -> None:
    """No learning, no flood list, ARP proxy on: every path to the peer is made (and unmade)
    by a control command."""
    a, b = _pair(topo)
    sock = str(tmp_path / "a.sock")
    v = Vxlanpy(topo, a, _vtep_args(sock, "--no-learning", "--proxy"))
    peer = _mac(b, "vx0")

    def flush_arp() -> None:
        a.sh("ip", "neigh", "flush", "dev", "vx0")

    def fdb(*args: str) -> str:
        return _ok(a, "fdb", *args, "--control", sock)

    def neigh(*args: str) -> str:
        return _ok(a, "neigh", *args, "--control", sock)

    def table(cmd: str) -> list[tuple[str, str, bool]]:
        """The table as the socket reports it (asked in-process: quicker than the CLI)."""
        rows = request(sock, {"cmd": cmd, "op": "show"})
        if cmd == "fdb":
            return [(r["mac"], r["dst"], r["permanent"]) for r in rows]
        return [(r["ip"], r["lladdr"], True) for r in rows]

    # nothing configured: ARP for the peer is an L3 miss (proxy on), nothing leaves
    assert fdb("show") == "" and neigh("show") == ""
    assert not _reaches(a, OB)

    # the proxy answers from the neighbour table: ARP resolved locally...
    assert neigh("add", OB, "lladdr", peer) == ""
    assert neigh("show").splitlines() == [f"{OB} dev vx0 lladdr {peer} PERMANENT"]
    assert json.loads(neigh("show", "--json")) == [
        {"ip": OB, "dev": "vx0", "lladdr": peer, "vni": VNI, "state": "PERMANENT"}
    ]
    # ... but there is no FDB entry and no flood list for the unicast frame yet
    assert not _reaches(a, OB)
    assert peer in a.sh("ip", "neigh", "show", OB, "dev", "vx0")  # the proxied answer

    # fdb add: the peer's MAC is behind the peer VTEP -> ping works
    assert fdb("add", peer, "dst", UB) == ""
    assert fdb("show").splitlines() == [f"{peer} dev vx0 dst {UB} vni {VNI} self permanent"]
    ping(a, OB, count=3)
    st = json.loads(_ok(a, "stats", "--json", "--control", sock))["segments"][str(VNI)]
    assert st["arp_proxied"] >= 1 and st["learned"] == 0

    # fdb replace towards an address where no VTEP is (inside the test's underlay) -> fails;
    # replace back -> works
    fdb("replace", peer, "dst", "198.18.0.99")
    assert table("fdb") == [(peer, "198.18.0.99", True)]
    assert not _reaches(a, OB)
    fdb("replace", peer, "dst", UB)
    ping(a, OB, count=2)

    # fdb del: unknown unicast with an empty flood list is dropped
    fdb("del", peer)
    assert table("fdb") == []
    assert not _reaches(a, OB)
    line = _fails(a, "fdb", "del", peer, "--control", sock)
    assert "not in the FDB" in line

    # the flood list (fdb append 00:..:00): unknown unicast is flooded to the peer -> works
    fdb("append", ZERO, "dst", UB)
    assert fdb("show").splitlines() == [f"{ZERO} dev vx0 dst {UB} vni {VNI} self permanent"]
    ping(a, OB, count=2)

    # neigh del: the proxy no longer knows the peer; ARP is an L3 miss, not flooded
    neigh("del", OB)
    assert table("neigh") == []
    flush_arp()
    assert not _reaches(a, OB)
    st = json.loads(_ok(a, "stats", "--json", "--control", sock))["segments"][str(VNI)]
    assert st["l3_misses"] >= 1

    # neigh replace brings it back; fdb del of the flood entry takes it away again
    neigh("replace", OB, "lladdr", peer)
    flush_arp()  # forget the failed resolution
    ping(a, OB, count=2)
    fdb("del", ZERO, "dst", UB)
    assert table("fdb") == []
    flush_arp()
    assert not _reaches(a, OB)
    assert v.stop() == 0, v.lines


def test_arp_flood_via_fdb_append_without_proxy(topo: Topology, tmp_path: Path) -> None:
    """Learning off, proxy off, no flood list: ARP has nowhere to go until ``fdb append``."""
    a, b = _pair(topo)
    sock = str(tmp_path / "a.sock")
    v = Vxlanpy(topo, a, _vtep_args(sock, "--no-learning"))
    assert not _reaches(a, OB)
    st = json.loads(_ok(a, "stats", "--json", "--control", sock))["segments"][str(VNI)]
    assert st["tx_packets"] == 0  # nothing was sent anywhere
    _ok(a, "fdb", "append", ZERO, "dst", UB, "--control", sock)
    a.sh("ip", "neigh", "flush", "dev", "vx0")  # forget the failed resolution
    ping(a, OB, count=3)  # ARP flooded, and the replies' unknown unicast too (no learning)
    st = json.loads(_ok(a, "stats", "--json", "--control", sock))["segments"][str(VNI)]
    assert st["floods"] >= 1 and st["learned"] == 0
    assert v.stop() == 0, v.lines


def test_default_socket_path_per_netns(topo: Topology) -> None:
    """Without --control the socket is /run/vxlanpy/netns-<ns>/<tap>.sock, and a client in the
    same namespace finds it without being told."""
    a, b = _pair(topo)
    where = f"/run/vxlanpy/netns-{a.ns}"
    path = f"{where}/vx0.sock"
    try:
        v = Vxlanpy(
            topo,
            a,
            ["--vni", str(VNI), "--local", UA, "--remote", UB, "--tap", "vx0"]
            + ["--address", f"{OA}/24"],
        )
        assert f"control {path};" in v.lines[0], v.lines
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(where).st_mode) == 0o700
        ping(a, OB, count=2)
        out = _ok(a, "fdb", "show")
        assert f"{_mac(b, 'vx0')} dev vx0 dst {UB} vni {VNI} self age" in out, out
        assert "vni 42:" in _ok(a, "stats")
        # from another namespace there is no VTEP to find
        line = _fails(b, "fdb", "show")
        assert "no running VTEP" in line and f"netns-{b.ns}" in line
        assert v.stop() == 0, v.lines
        assert not os.path.exists(path) and not os.path.exists(where)
    finally:
        if os.path.isdir(where):  # left behind only if the VTEP was killed
            shutil.rmtree(where, ignore_errors=True)


def _raw(sock: str, req: dict[str, object]) -> bytes:
    """One request straight on the socket; the raw answer line (b"" if the VTEP hung up)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(sock)
        s.sendall(json.dumps(req).encode() + b"\n")
        with s.makefile("rb") as f:
            return f.readline()


@pytest.mark.parametrize(
    "req",
    [
        pytest.param(
            {"cmd": "fdb", "op": "add", "mac": "02:00:00:00:00:77", "dst": 5},
            id="fdb-dst-integer",
        ),
        pytest.param(
            {"cmd": "neigh", "op": "add", "ip": OB, "lladdr": 5},
            id="neigh-lladdr-integer",
        ),
        pytest.param({"cmd": "neigh", "op": "add", "ip": 5, "lladdr": ZERO}, id="neigh-ip-int"),
        pytest.param({"cmd": "fdb", "op": "add", "mac": 5, "dst": UB}, id="fdb-mac-integer"),
        pytest.param({"cmd": "fdb", "op": "add", "mac": ZERO, "port": "x"}, id="fdb-port-str"),
        pytest.param({"cmd": "fdb", "op": "zap", "mac": ZERO, "dst": UB}, id="fdb-unknown-op"),
    ],
)
def test_wrongly_typed_request_is_refused(
    topo: Topology, tmp_path: Path, req: dict[str, object]
) -> None:
    """A request with a field of the wrong JSON type gets {"ok": false, ...}, changes nothing,
    and the server goes on serving."""
    a = topo.add_host("a")
    a.no_ipv6()
    sock = str(tmp_path / "a.sock")
    v = Vxlanpy(topo, a, ["--vni", str(VNI), "--tap", "vx0", "--control", sock])
    try:
        line = _raw(sock, req)
        assert line, "the VTEP closed the connection without answering"
        resp = json.loads(line)
        assert resp["ok"] is False and resp["error"], resp
        assert request(sock, {"cmd": "fdb", "op": "show"}) == []
        assert request(sock, {"cmd": "neigh", "op": "show"}) == []
        assert not any("Traceback" in line for line in v.lines), v.lines
    finally:
        assert v.stop() == 0, v.lines
