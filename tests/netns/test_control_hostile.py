"""The control socket of a running ``vxlanpy-tunnel run`` under hostile clients (black box):
2,000 malformed and near-miss requests while 200 idle connections are held. The VTEP stays
alive, every request is answered (or its connection closed after a line saying why), and once
the clients close, its file descriptors are back to the baseline within 1 s and its RSS grew by
less than 32 MB."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from conftest import Vxlanpy, ping
from test_control import OB, UB, _ok, _pair, _vtep_args

from vxlanpy.netns import Topology, wait_for

IDLE = 200
REQUESTS = 2000


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s


def _answers(s: socket.socket, n: int) -> list[dict[str, object]]:
    """Read ``n`` answer lines (fewer if the server closes the connection)."""
    f = s.makefile("rb")
    out = []
    for _ in range(n):
        line = f.readline()
        if not line:
            break
        out.append(json.loads(line))
    f.close()
    return out


# near misses of real requests, and plain garbage; each one line, each must get an answer
NEAR_MISSES = [
    b'{"cmd": "stat"}',
    b'{"cmd": "fdb", "op": "add"}',
    b'{"cmd": "fdb", "op": "add", "mac": "02:00:00:00:00:01", "dst": "::1"}',
    b'{"cmd": "fdb", "op": "add", "mac": "02:00:00:00:00:01", "dst": "198.18.0.2", "port": 0}',
    b'{"cmd": "fdb", "op": "del", "mac": "02:00:00:00:00:99"}',
    b'{"cmd": "fdb", "op": "add", "mac": "ff:ff:ff:ff:ff:ff:ff", "dst": "198.18.0.2"}',
    b'{"cmd": "fdb", "op": "show", "vni": "42"}',
    b'{"cmd": "fdb", "op": "show", "vni": true}',
    b'{"cmd": "fdb", "op": ["show"]}',
    b'{"cmd": "neigh", "op": "add", "ip": "198.19.0.300", "lladdr": "02:00:00:00:00:01"}',
    b'{"cmd": "neigh", "op": "del", "ip": {}}',
    b'{"cmd": {"nested": [1, 2, {"x": null}]}}',
    b'{"cmd": "fdb", "op": "add", "mac": "02:00:00:00:00:01", "dst": "198.18.0.2", '
    b'"remote_vni": 1e99}',
    b"[" * 40_000 + b"]" * 20_000,
    b"{" * 30_000,
    b'"just a string"',
    b"null",
    b"\xff\xfe\xfd\x00garbage",
    b"",
    b'{"cmd": "events"',
]


def test_malformed_requests_and_idle_connections(topo: Topology, tmp_path: Path) -> None:
    a, b = _pair(topo)
    path = str(tmp_path / "a.sock")
    v = Vxlanpy(topo, a, _vtep_args(path, "--remote", UB))
    pid = v.proc.pid
    ping(a, OB, count=2)
    _ok(a, "stats", "--control", path)
    time.sleep(0.5)
    base_fds, base_rss = _fds(pid), _rss_kb(pid)

    idle = [_connect(path) for _ in range(IDLE)]
    assert wait_for(lambda: _fds(pid) >= base_fds + IDLE, 5), (_fds(pid), base_fds)

    answered = sent = unread = 0
    kinds = len(NEAR_MISSES)
    k = 0
    while sent < REQUESTS:
        if k % 3 == 0:
            # a pipeline of ten lines on one connection: ten answers, in order
            lines = [NEAR_MISSES[(k + j) % kinds] for j in range(10)]
            with _connect(path) as s:
                s.sendall(b"".join(line + b"\n" for line in lines))
                got = _answers(s, len(lines))
            sent += len(lines)
        elif k % 3 == 1:
            # one line, then the client goes away without reading
            with _connect(path) as s:
                s.sendall(NEAR_MISSES[k % kinds] + b"\n")
            sent += 1
            unread += 1
            k += 1
            continue
        else:
            with _connect(path) as s:
                s.sendall(NEAR_MISSES[k % kinds] + b"\n")
                got = _answers(s, 1)
            sent += 1
            lines = [NEAR_MISSES[k % kinds]]
        assert len(got) == len(lines), (lines, got)
        for line, resp in zip(lines, got, strict=True):
            assert resp["ok"] is False and resp["error"], (line[:60], resp)
        answered += len(got)
        k += 1
    # subscribers that leave at once (the +51 fds of the issue)
    for _ in range(100):
        with _connect(path) as s:
            s.sendall(b'{"cmd": "events"}\n')
            assert _answers(s, 1) == [{"ok": True}]
    # a line over the 64 KiB limit: answered, then the connection is closed
    with _connect(path) as s:
        s.sendall(b"x" * 100_000 + b"\n")
        got = _answers(s, 2)
        assert len(got) == 1 and "over 65536 bytes" in str(got[0]["error"]), got

    # the idle connections were not dropped (60 s idle timeout) and are still served
    for s in idle[:5]:
        s.sendall(b'{"cmd": "stats"}\n')
        resp = _answers(s, 1)
        assert resp and resp[0]["ok"] is True
    peak_rss = _rss_kb(pid)
    for s in idle:
        s.close()
    t0 = time.monotonic()
    assert wait_for(lambda: _fds(pid) <= base_fds, 1.0), (_fds(pid), base_fds)
    settle = time.monotonic() - t0
    rss = _rss_kb(pid)
    print(
        f"control: {answered} of {sent} requests answered (+{unread} sent by clients that left "
        f"without reading), {IDLE} idle; fds {base_fds} -> {base_fds} in {settle:.3f} s; "
        f"RSS {base_rss} -> peak {peak_rss} -> {rss} kB"
    )
    assert answered + unread == sent >= REQUESTS
    assert max(peak_rss, rss) - base_rss < 32 * 1024
    # alive: control and traffic
    st = json.loads(_ok(a, "stats", "--json", "--control", path))
    assert st["segments"]["42"]["rx_packets"] >= 2
    ping(a, OB, count=2)
    assert v.stop() == 0, v.lines
    assert not any("Traceback" in line for line in v.lines), v.lines
