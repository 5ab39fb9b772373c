"""A flannel network in namespaces for the tests: etcd members, nodes, containers, agents.

Everything sits on one L2 switch: node ``hN`` at 198.18.0.N, etcd member ``eN`` at
198.18.0.(200+N). Each node runs ``vxlanpy-tunnel flannel`` (vxlanpy or kernel dataplane) and
gets a container namespace behind a ``cni0`` bridge, addressed from its leased subnet (as the
flannel CNI plugin would: ``.1`` on the bridge, ``.2`` in the container). The expected tables
are computed from etcd's data with plain ``json``, independently of vxlanpy's lease codec.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest

from vxlanpy.flannel.etcd_cluster import EtcdCluster
from vxlanpy.flannel.lab import add_container
from vxlanpy.netns import Host, Topology, have_netns

PREFIX = "/coreos.com/network"
CONFIG = {"Network": "198.19.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}


def need_netns() -> None:
    """Skip without privileges, fail under CI=true (as conftest's ``topo`` fixture)."""
    if not have_netns():
        msg = "needs root, iproute2 and /dev/net/tun to build network namespaces"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true but {msg}")
        pytest.skip(msg)


class Agent:
    """A ``vxlanpy-tunnel flannel`` process in a node's namespace; stderr kept in ``lines``."""

    def __init__(self, host: Host, argv: list[str]) -> None:
        self.host = host
        self.lines: list[str] = []
        self.proc = host.popen(
            [sys.executable, "-m", "vxlanpy.cli", "flannel", *argv],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def wait_line(self, text: str, timeout: float, after: int = 0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines[after:]):
                return True
            if self.proc.poll() is not None:
                self._reader.join(2)
                return any(text in line for line in self.lines[after:])
            time.sleep(0.05)
        return False

    def text(self) -> str:
        return "\n".join(self.lines)

    def stop(self, topo: Topology) -> int:
        code = topo.stop(self.proc, timeout=10)
        self._reader.join(5)
        return code


@dataclass
class Node:
    name: str
    host: Host
    ip: str
    backend: str
    env_file: str
    agent: Agent | None = None
    container: Host | None = None
    subnet: ipaddress.IPv4Network | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def container_ip(self) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + 2)


class FlannelNet:
    def __init__(self, topo: Topology, tmp: str, backends: list[str], members: int = 3) -> None:
        self.topo = topo
        self.tmp = tmp
        self.etcd_hosts = [topo.add_host(f"e{i + 1}") for i in range(members)]
        hosts = [topo.add_host(f"h{i + 1}") for i in range(len(backends))]
        addrs = [f"198.18.0.{200 + i + 1}/24" for i in range(members)]
        addrs += [f"198.18.0.{i + 1}/24" for i in range(len(backends))]
        self.dev = topo.switch([*self.etcd_hosts, *hosts], addrs)
        self.etcd = EtcdCluster(
            os.path.join(tmp, "etcd"),
            [(h.name, f"198.18.0.{200 + i + 1}", h) for i, h in enumerate(self.etcd_hosts)],
            token=topo.tag,
        )
        self.nodes = {
            h.name: Node(h.name, h, f"198.18.0.{i + 1}", be, os.path.join(tmp, f"{h.name}.env"))
            for i, (h, be) in enumerate(zip(hosts, backends, strict=True))
        }

    def start_etcd(self, config: dict[str, object] | None = None) -> None:
        self.etcd.start()
        self.etcd.ctl("put", f"{PREFIX}/config", json.dumps(config or CONFIG))

    def endpoints(self, rotate: int = 0) -> str:
        urls = [m.client_url for m in self.etcd.members.values()]
        k = rotate % len(urls)
        return ",".join(urls[k:] + urls[:k])

    def start_agent(self, name: str, *extra: str, rotate: int = 0, wait: bool = True) -> Agent:
        n = self.nodes[name]
        argv = ["--etcd-endpoints", self.endpoints(rotate), "--iface", self.dev]
        argv += ["--backend", n.backend, "--subnet-file", n.env_file, *n.extra, *extra]
        n.agent = Agent(n.host, argv)
        if wait:
            assert n.agent.wait_line("flannel: lease", 30), n.agent.text()
            n.subnet = read_subnet(n.env_file)
        return n.agent

    def add_container(self, name: str) -> Host:
        """A container namespace behind ``cni0`` on node ``name``, addressed from its lease."""
        n = self.nodes[name]
        n.container, ip = add_container(self.topo, n.host, n.env_file, f"c{name[1:]}")
        assert ip == n.container_ip
        return n.container

    # --- what etcd holds, and what each node programmed ------------------------------------

    def leases(self) -> dict[str, dict[str, object]]:
        """Subnet (``198.19.5.0/24``) -> the lease JSON, straight from etcdctl."""
        out = json.loads(self.etcd.ctl("get", "--prefix", f"{PREFIX}/subnets/", "-w", "json"))
        leases = {}
        for kv in out.get("kvs", []):
            key = base64.b64decode(kv["key"]).decode()
            try:
                value = json.loads(base64.b64decode(kv["value"]))
            except ValueError:
                continue
            if not isinstance(value, dict) or value.get("BackendType") != "vxlan":
                continue
            leases[key.rsplit("/", 1)[1].replace("-", "/")] = value
        return leases

    def expected(self, name: str) -> tuple[set[str], set[tuple[str, str]], set[tuple[str, str]]]:
        """What flanneld would program on ``name``: routes (``subnet via gw``), neighbours
        (ip, mac) and FDB entries (mac, dst), one each per other lease."""
        own = str(self.nodes[name].subnet)
        routes, neigh, fdb = set(), set(), set()
        for subnet, lease in self.leases().items():
            if subnet == own:
                continue
            gw = subnet.split("/")[0]
            data = lease["BackendData"]
            assert isinstance(data, dict)
            mac = str(data["VtepMAC"]).lower()
            routes.add(f"{subnet} via {gw}")
            neigh.add((gw, mac))
            fdb.add((mac, str(lease["PublicIP"])))
        return routes, neigh, fdb

    def tables(self, name: str) -> tuple[set[str], set[tuple[str, str]], set[tuple[str, str]]]:
        """What ``name`` has: onlink routes and permanent neighbours on flannel.1 (kernel), FDB
        entries (the kernel's, or vxlanpy's from its control socket)."""
        h = self.nodes[name].host
        routes = set()
        for r in json.loads(h.sh("ip", "-j", "route", "show", "dev", "flannel.1")):
            if "onlink" in r.get("flags", []):
                routes.add(f"{r['dst']} via {r['gateway']}")
        neigh = {
            (n["dst"], n["lladdr"])
            for n in json.loads(h.sh("ip", "-j", "neigh", "show", "dev", "flannel.1"))
            if "PERMANENT" in n.get("state", [])
        }
        if self.nodes[name].backend == "kernel":
            rows = json.loads(h.sh("bridge", "-j", "fdb", "show", "dev", "flannel.1"))
            fdb = {(r["mac"], r["dst"]) for r in rows if "dst" in r}
        else:
            rows = json.loads(h.sh(sys.executable, "-m", "vxlanpy.cli", "fdb", "show", "--json"))
            fdb = {(r["mac"], r["dst"]) for r in rows if r["permanent"]}
        return routes, neigh, fdb

    def has_route(self, name: str, subnet: str) -> bool:
        out = self.topo.run(["ip", "-n", self.nodes[name].host.ns, "route", "show", subnet])
        return bool(out.strip())

    def wait_routes(self, subnet: str, present: bool, names: list[str], timeout: float) -> float:
        """Poll until ``subnet``'s route is there (or gone) on every node of ``names``;
        the seconds it took (AssertionError after ``timeout``)."""
        t0 = time.monotonic()
        pending = list(names)
        while pending:
            pending = [n for n in pending if self.has_route(n, subnet) != present]
            if not pending:
                break
            assert time.monotonic() - t0 < timeout, f"{subnet} present={present}: {pending}"
            time.sleep(0.01)
        return time.monotonic() - t0


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def read_subnet(path: str) -> ipaddress.IPv4Network:
    for line in read(path).splitlines():
        if line.startswith("FLANNEL_SUBNET="):
            return ipaddress.IPv4Network(line.split("=", 1)[1].strip(), strict=False)
    raise AssertionError(f"no FLANNEL_SUBNET in {path}")


def sim_lease(i: int, mac: str | None = None) -> tuple[str, str]:
    """Key and value of simulated node ``i`` in 198.19.200+.0/24, as flanneld writes them."""
    subnet = f"198.19.{200 + i}.0"
    value = {
        "PublicIP": f"198.18.1.{i + 1}",
        "PublicIPv6": None,
        "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": mac or f"02:5b:00:00:00:{i + 1:02x}"},
    }
    return f"{PREFIX}/subnets/{subnet}-24", json.dumps(value, separators=(",", ":"))
