"""flannel at scale: 1,000 simulated nodes' leases programmed on one node, vxlanpy and kernel.

    sudo .venv/bin/python benchmarks/flannel_scale.py [--leases 1000] [--write-docs]

One etcd member in a namespace, one node namespace running ``vxlanpy-tunnel flannel`` (the
vxlanpy dataplane, then the kernel one), the leases written straight into etcd by
``vxlanpy.flannel.simulate`` (as flanneld writes them, bound to an etcd lease). Per dataplane:

- burst: the agent runs with no peer; N leases are written; time from the first write until the
  node has all N routes, neighbour and FDB entries (3 N entries), and entries per second;
- withdraw: the N leases deleted; time until every entry is gone;
- cold start: the agent started with the N leases in etcd; time from the process start (Python
  and imports included) until all are programmed;
- memory: the agent's RSS with N peers minus with none, per peer (the kernel's own memory for
  the kernel's entries is not counted).

Bounded: one run of each, at most ``--timeout`` seconds per wait. ``--write-docs`` puts the
table into docs/benchmarks.md (its "flannel at scale" section) and docs/flannel_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vxlanpy.flannel.etcd_cluster import EtcdCluster
from vxlanpy.netns import Host, Topology, have_netns

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "/coreos.com/network"
CONFIG = {"Network": "198.19.0.0/16", "SubnetLen": 28, "Backend": {"Type": "vxlan"}}
SIM_NETWORK = "198.19.128.0/17"
MARK = "<!-- flannel_scale.py writes the section below -->"


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Bench:
    def __init__(self, topo: Topology, tmp: str, n: int, timeout: float) -> None:
        self.topo, self.tmp, self.n, self.timeout = topo, tmp, n, timeout
        self.e = topo.add_host("e1")
        self.node = topo.add_host("n1")
        self.dev = topo.link(self.e, self.node, "198.18.0.201/24", "198.18.0.1/24")
        self.etcd = EtcdCluster(os.path.join(tmp, "etcd"), [("e1", "198.18.0.201", self.e)])
        self.etcd.start()
        self.etcd.ctl("put", f"{PREFIX}/config", json.dumps(CONFIG))

    def simulate(self, op: str) -> float:
        """Write (``put``) or delete the N leases; when the first request went (monotonic)."""
        argv = [sys.executable, "-m", "vxlanpy.flannel.simulate", "--etcd-endpoints"]
        argv += [self.etcd.endpoints, "--network", SIM_NETWORK, "--subnet-len", "28", op]
        out = json.loads(self.e.sh(*argv, str(self.n), timeout=self.timeout))
        return float(out["start"])

    def start_agent(self, backend: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "vxlanpy.cli", "flannel", "--etcd-endpoints"]
        argv += [self.etcd.endpoints, "--iface", self.dev, "--backend", backend]
        argv += ["--subnet-file", os.path.join(self.tmp, "subnet.env")]
        log = open(os.path.join(self.tmp, f"{backend}.log"), "ab")  # noqa: SIM115
        return self.node.popen(argv, stderr=log, stdout=subprocess.DEVNULL)

    def wait_started(self, p: subprocess.Popen[bytes], backend: str) -> None:
        path = os.path.join(self.tmp, f"{backend}.log")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise RuntimeError(f"agent exited: {Path(path).read_text()[-2000:]}")
            if "flannel: lease" in Path(path).read_text():
                return
            time.sleep(0.05)
        raise RuntimeError("agent did not start")

    def counts(self) -> tuple[int, int]:
        """Onlink routes and permanent neighbours on flannel.1 (cheap enough to poll)."""
        h = self.node
        routes = h.sh("ip", "route", "show", "dev", "flannel.1", check=False).count(" onlink")
        neigh = h.sh("ip", "neigh", "show", "dev", "flannel.1", check=False).count("PERMANENT")
        return routes, neigh

    def fdb(self, backend: str) -> int:
        h: Host = self.node
        if backend == "kernel":
            return h.sh("bridge", "fdb", "show", "dev", "flannel.1").count(" dst ")
        rows = json.loads(h.sh(sys.executable, "-m", "vxlanpy.cli", "fdb", "show", "--json"))
        return sum(1 for r in rows if r["permanent"])

    def wait_counts(self, backend: str, want: int) -> float:
        """Poll until the routes and neighbours number ``want``, then check the FDB (both
        dataplanes program the FDB entry before the route and remove it before the
        neighbour); the monotonic time it was reached."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.counts() == (want, want):
                t = time.monotonic()
                got = self.fdb(backend)
                if got != want:
                    raise RuntimeError(f"{backend}: {got} FDB entries, want {want}")
                return t
            time.sleep(0.05)
        raise RuntimeError(f"{backend}: {self.counts()} routes/neighbours, want {want} each")

    def run(self, backend: str) -> dict[str, Any]:
        n = self.n
        agent = self.start_agent(backend)
        try:
            self.wait_started(agent, backend)
            time.sleep(1.0)
            rss0 = _rss_kb(agent.pid)
            t0 = self.simulate("put")
            t1 = self.wait_counts(backend, n)
            time.sleep(1.0)
            rss1 = _rss_kb(agent.pid)
            t2 = self.simulate("delete")
            t3 = self.wait_counts(backend, 0)
            self.simulate("put")
            self.wait_counts(backend, n)
        finally:
            self.topo.stop(agent, timeout=20)
        t4 = time.monotonic()
        agent = self.start_agent(backend)
        try:
            t5 = self.wait_counts(backend, n)
        finally:
            self.topo.stop(agent, timeout=20)
        self.simulate("delete")
        return {
            "burst_s": t1 - t0,
            "burst_entries_per_s": 3 * n / (t1 - t0),
            "withdraw_s": t3 - t2,
            "withdraw_entries_per_s": 3 * n / (t3 - t2),
            "cold_start_s": t5 - t4,
            "rss_kb_0": rss0,
            "rss_kb_n": rss1,
            "rss_bytes_per_peer": (rss1 - rss0) * 1024 / n,
        }


def machine() -> dict[str, str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    etcd = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"etcd Version: (\S+)", etcd)
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "etcd": m.group(1) if m else "?",
    }


def markdown(res: dict[str, dict[str, Any]], mach: dict[str, str], n: int, cmd: str) -> str:
    rows = [
        ("burst: N leases written -> all 3N entries programmed [s]", "burst_s", "{:.2f}"),
        ("burst rate [entries/s]", "burst_entries_per_s", "{:.0f}"),
        ("withdraw: N leases deleted -> all entries gone [s]", "withdraw_s", "{:.2f}"),
        ("withdraw rate [entries/s]", "withdraw_entries_per_s", "{:.0f}"),
        ("cold start: process start -> N peers programmed [s]", "cold_start_s", "{:.2f}"),
        ("agent RSS with no peer [MiB]", "rss_kb_0", "{:.1f}"),
        ("agent RSS with N peers [MiB]", "rss_kb_n", "{:.1f}"),
        ("agent memory per peer [bytes]", "rss_bytes_per_peer", "{:.0f}"),
    ]
    out = [
        "## flannel at scale",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, Linux {mach['kernel']}, Python "
        f"{mach['python']}, etcd {mach['etcd']} (Debian)  ",
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; N = {n} simulated nodes, "
        "one run each.",
        "",
        "| metric | vxlanpy node | kernel node |",
        "|---|---|---|",
    ]
    for label, key, fmt in rows:
        cells = []
        for be in ("vxlanpy", "kernel"):
            v = res[be][key]
            cells.append(fmt.format(v / 1024 if key.startswith("rss_kb") else v))
        out.append(f"| {label} | {' | '.join(cells)} |")
    out += [
        "",
        "One etcd member and one node in network namespaces; `vxlanpy.flannel.simulate` writes",
        "the N leases (flanneld's format, bound to one etcd lease) with up to 64 puts in flight;",
        "the node's tables are polled every 50 ms (`ip route`, `ip neigh`, `bridge fdb` or",
        "`vxlanpy-tunnel fdb show`), so times are rounded up to that. An entry is one route,",
        "one neighbour or one FDB entry (3 per peer). The vxlanpy node's memory per peer is its",
        "FDB entry, the lease and peer records of the agent, etcd client buffers; the kernel",
        "node's agent holds only the lease and peer records (the kernel's entries are kernel",
        "memory, not counted).",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--leases", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=120.0, help="bound of each wait, s")
    p.add_argument("--write-docs", action="store_true")
    a = p.parse_args(argv)
    if not have_netns():
        print("needs root, iproute2 and /dev/net/tun", file=sys.stderr)
        return 1
    cmd = "python benchmarks/flannel_scale.py " + " ".join(argv or sys.argv[1:])
    results = {}
    with Topology() as topo, tempfile.TemporaryDirectory() as tmp:
        bench = Bench(topo, tmp, a.leases, a.timeout)
        try:
            for backend in ("vxlanpy", "kernel"):
                results[backend] = bench.run(backend)
                print(backend, json.dumps(results[backend]), file=sys.stderr)
        finally:
            bench.etcd.stop()
    mach = machine()
    md = markdown(results, mach, a.leases, cmd.strip())
    print(md)
    if a.write_docs:
        docs = ROOT / "docs"
        (docs / "flannel_scale.json").write_text(
            json.dumps({"machine": mach, "leases": a.leases, "results": results}, indent=2) + "\n"
        )
        bm = docs / "benchmarks.md"
        text = bm.read_text()
        head = text.split(MARK)[0].rstrip("\n")
        bm.write_text(f"{head}\n\n{MARK}\n\n{md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
