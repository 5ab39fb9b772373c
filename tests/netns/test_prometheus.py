"""A real Prometheus scrapes a running VTEP (``run --metrics``) and its query API agrees with the
VTEP's own ``stats``; ``promtool check metrics`` has nothing to say about the exposition; the
Grafana dashboard queries only metrics the exposition has.

vxlanpy runs against the kernel's vxlan (the reference peer); Debian's ``prometheus`` (installed
with apt when missing) runs in vxlanpy's namespace, on its loopback, with a storage directory of
its own and a one-second scrape interval, and is stopped by PID.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import Vxlanpy, ping

from vxlanpy.netns import Host, NetnsError, Topology, ensure_tools

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-vxlanpy.json"
_GET = (
    "import sys, urllib.request\n"
    "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
)
_FREE_PORT = (
    "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
)


def dashboard_metrics() -> set[str]:
    """The metric names the dashboard's queries (panels and variables) use."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return set(re.findall(r"\b((?:vxlanpy|process)_[a-z_]+)\b", " ".join(exprs)))


def _get(host: Host, url: str) -> str:
    return host.sh(sys.executable, "-c", _GET, url)


def _query(host: Host, port: int, q: str) -> list[dict[str, Any]]:
    out = json.loads(_get(host, f"http://127.0.0.1:{port}/api/v1/query?query={q}"))
    assert out["status"] == "success", out
    return list(out["data"]["result"])


def _stats(host: Host) -> dict[str, Any]:
    return dict(json.loads(host.sh(sys.executable, "-m", "vxlanpy.cli", "stats", "--json")))


def test_prometheus_scrapes_the_vtep(topo: Topology, tmp_path: Path) -> None:
    ensure_tools({"prometheus": "prometheus", "promtool": "prometheus"})
    a, b = topo.add_host("a"), topo.add_host("b")
    dev = topo.link(a, b, "198.18.0.1/24", "198.18.0.2/24")
    topo.kernel_vxlan(b, vni=120, dev=dev, remote="198.18.0.1", address="198.19.0.2/24")
    port, prom_port = (int(a.sh(sys.executable, "-c", _FREE_PORT)) for _ in range(2))
    if port == prom_port:
        prom_port = port + 1
    v = Vxlanpy(
        topo,
        a,
        ["--vni", "120", "--local", "198.18.0.1", "--remote", "198.18.0.2", "--tap", "vx0"]
        + ["--address", "198.19.0.1/24", "--metrics", f"127.0.0.1:{port}"],
    )
    assert f"metrics http://127.0.0.1:{port}/metrics" in v.lines[0]
    ping(a, "198.19.0.2")

    # promtool on the exposition as Prometheus gets it
    text = _get(a, f"http://127.0.0.1:{port}/metrics")
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    names |= {line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")}
    missing = dashboard_metrics() - names
    assert not missing, f"the dashboard queries metrics the exposition lacks: {missing}"

    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: vxlanpy\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{port}']\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    prom = a.popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}"]
        + [f"--storage.tsdb.path={tmp_path / 'data'}"]
        + [f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # the per-VNI counter Prometheus holds equals the VTEP's own (traffic has stopped; a
        # late ARP may move it, so the two are compared until they meet, bounded)
        deadline = time.monotonic() + 60
        seen: list[Any] = []
        while time.monotonic() < deadline:
            assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                seen = _query(a, prom_port, "vxlanpy_rx_packets_total")
            except (NetnsError, ValueError):  # not listening yet
                seen = []
            mine = _stats(a)["segments"]["120"]["rx_packets"]
            by_vni = {r["metric"]["vni"]: float(r["value"][1]) for r in seen}
            if by_vni.get("120") == mine and mine >= 5:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"Prometheus has {seen}, the VTEP {mine}")
        assert seen[0]["metric"]["job"] == "vxlanpy"
        up = _query(a, prom_port, 'up{job="vxlanpy"}')
        assert [float(r["value"][1]) for r in up] == [1.0]
        peer = _query(a, prom_port, 'vxlanpy_peer_rx_packets_total{peer="198.18.0.2"}')
        assert peer and float(peer[0]["value"][1]) >= 5
        fdb = _query(a, prom_port, 'vxlanpy_fdb_entries{vni="120"}')
        assert [float(r["value"][1]) for r in fdb] == [1.0]  # the kernel peer's MAC, learned
    finally:
        topo.stop(prom)
        log.close()
    assert v.stop() == 0


_LISTEN = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
    "print(s.getsockname()[1], flush=True); time.sleep(60)"
)


def test_metrics_port_taken_is_a_clear_error(topo: Topology) -> None:
    a = topo.add_host("a")
    holder = a.popen([sys.executable, "-c", _LISTEN], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        port = int(holder.stdout.readline())
        p = subprocess.run(
            ["ip", "netns", "exec", a.ns, sys.executable, "-m", "vxlanpy.cli", "run"]
            + ["--vni", "7", "--tap", "vxm", "--metrics", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert p.returncode == 1, p.stderr
        assert f"error: metrics: cannot listen on 127.0.0.1:{port}" in p.stderr, p.stderr
        assert "vxm" not in a.ip("-o", "link", "show")  # the TAP went with the VTEP
    finally:
        topo.stop(holder)
