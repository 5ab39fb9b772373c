"""``vxlanpy-tunnel lab --control-plane etcd --hosts N``: a flannel network in namespaces.

An etcd member (Debian's etcd-server, installed if missing) in its own namespace, N hosts on
one L2 switch, each running ``vxlanpy-tunnel flannel`` (h1 with the vxlanpy dataplane, the
others with ``--peer``'s: the kernel's vxlan device or vxlanpy), a container namespace behind
each host's ``cni0`` bridge, addressed from the host's lease. The lab pings every container
from every other, runs iperf3 between the first two, prints each host's flannel tables and the
leases, and tears everything down (``--keep`` leaves it up until ``--stop TAG``).

Addresses: hosts 198.18.0.<n>/24, etcd 198.18.0.201; flannel Network 198.19.0.0/16, /24 leases.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..netns import Host, NetnsError, Topology
from .etcd_cluster import EtcdCluster
from .subnets import parse_subnet_env, read_previous_subnet

__all__ = ["run_flannel_lab", "add_container"]

PREFIX = "/coreos.com/network"
CONFIG = {"Network": "198.19.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}


def _say(msg: str) -> None:
    print(msg, flush=True)


def add_container(topo: Topology, host: Host, env_file: str, name: str) -> tuple[Host, str]:
    """A container namespace behind a ``cni0`` bridge on ``host``, as flannel's CNI plugin
    sets one up from ``subnet.env``: ``.1`` on the bridge, ``.2`` in the container, the MTU
    FLANNEL_MTU. Returns the container and its address."""
    with open(env_file) as f:
        env = parse_subnet_env(f.read())
    subnet = read_previous_subnet(env_file)
    if subnet is None:
        raise NetnsError(f"no FLANNEL_SUBNET in {env_file}")
    mtu = env["FLANNEL_MTU"]
    bridge, ip = subnet.network_address + 1, str(subnet.network_address + 2)
    c = topo.add_host(name)
    host.sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
    host.ip("link", "add", "cni0", "type", "bridge")
    host.ip("addr", "add", f"{bridge}/{subnet.prefixlen}", "dev", "cni0")
    host.ip("link", "set", "cni0", "up")
    topo.run(
        ["ip", "link", "add", "eth0", "netns", c.ns, "mtu", mtu, "type", "veth", "peer"]
        + ["name", "veth0", "netns", host.ns, "mtu", mtu]
    )
    host.ip("link", "set", "veth0", "master", "cni0", "up")
    c.ip("addr", "add", f"{ip}/{subnet.prefixlen}", "dev", "eth0")
    c.ip("link", "set", "eth0", "up")
    c.ip("route", "add", "default", "via", str(bridge))
    return c, ip


class _FlannelLab:
    def __init__(self, a: argparse.Namespace, tmp: str) -> None:
        self.a = a
        self.tmp = tmp
        self.topo = Topology()
        self.agents: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        self.containers: dict[str, tuple[Host, str]] = {}

    def build(self) -> None:
        n = self.a.hosts
        self.e1 = self.topo.add_host("e1")
        self.hosts = [self.topo.add_host(f"h{i + 1}") for i in range(n)]
        addrs = ["198.18.0.201/24"] + [f"198.18.0.{i + 1}/24" for i in range(n)]
        self.dev = self.topo.switch([self.e1, *self.hosts], addrs)
        self.etcd = EtcdCluster(
            os.path.join(self.tmp, "etcd"), [("e1", "198.18.0.201", self.e1)], self.topo.tag
        )

    def start_etcd(self) -> None:
        self.etcd.start()
        self.etcd.ctl("put", f"{PREFIX}/config", json.dumps(CONFIG))
        _say(f"      etcd {self.etcd.endpoints}: {PREFIX}/config = {json.dumps(CONFIG)}")

    def backend(self, i: int) -> str:
        return "vxlanpy" if i == 0 else str(self.a.peer)

    def start_agents(self) -> None:
        for i, h in enumerate(self.hosts):
            log = os.path.join(self.tmp, f"{h.name}.log")
            argv = [sys.executable, "-m", "vxlanpy.cli", "flannel"]
            argv += ["--etcd-endpoints", self.etcd.endpoints, "--iface", self.dev]
            argv += ["--backend", self.backend(i), "--subnet-file", self._env(h)]
            with open(log, "wb") as f:
                self.agents[h.name] = (h.popen(argv, stdout=f, stderr=f), log)
        deadline = time.monotonic() + 30
        for h in self.hosts:
            p, log = self.agents[h.name]
            while "flannel: lease" not in _read(log):
                if p.poll() is not None or time.monotonic() > deadline:
                    raise NetnsError(f"the agent on {h.name} did not start:\n{_read(log)}")
                time.sleep(0.05)
            line = next(ln for ln in _read(log).splitlines() if "flannel: lease" in ln)
            _say(f"      {h.name}: {line.split('flannel: ', 1)[1].split('; etcd')[0]}")

    def _env(self, h: Host) -> str:
        return os.path.join(self.tmp, f"{h.name}.env")

    def wait_converged(self) -> None:
        want = len(self.hosts) - 1
        deadline = time.monotonic() + 20
        for h in self.hosts:
            while h.sh("ip", "route", "show", "dev", "flannel.1").count("onlink") < want:
                if time.monotonic() > deadline:
                    raise NetnsError(f"{h.name} did not get every peer's route")
                time.sleep(0.1)

    def add_containers(self) -> None:
        for i, h in enumerate(self.hosts):
            c, ip = add_container(self.topo, h, self._env(h), f"c{i + 1}")
            self.containers[h.name] = (c, ip)
            _say(f"      {c.name} behind {h.name}: {ip}")

    def ping_all(self) -> int:
        failures = 0
        for src, (c, _ip) in self.containers.items():
            for dst, (_c, ip) in self.containers.items():
                if src == dst:
                    continue
                out = c.sh("ping", "-c", "3", "-i", "0.2", "-W", "2", ip, check=False)
                ok = " 0% packet loss" in out
                rtt = out.rsplit("= ", 1)[-1].split("/")[1] + " ms" if ok else "n/a"
                _say(f"      c{src[1:]} -> c{dst[1:]} ({ip}): {'ok' if ok else 'LOST'}, rtt {rtt}")
                failures += not ok
        return failures

    def iperf(self) -> None:
        (c1, _), (c2, ip2) = self.containers["h1"], self.containers["h2"]
        srv = c2.popen(["iperf3", "-s", "-1", "-B", ip2], stdout=subprocess.DEVNULL)
        try:
            for _ in range(50):
                out = c1.sh("iperf3", "-c", ip2, "-t", str(self.a.seconds), "-J", check=False)
                if '"error"' not in out:
                    break
                time.sleep(0.1)
            bps = json.loads(out)["end"]["sum_received"]["bits_per_second"]
            _say(f"      c1 -> c2: {bps / 1e6:.0f} Mbit/s")
        finally:
            self.topo.stop(srv)

    def show(self) -> None:
        for i, h in enumerate(self.hosts):
            _say(f"  {h.name} ({self.backend(i)}):")
            for cmd in (
                ["ip", "route", "show", "dev", "flannel.1"],
                ["ip", "neigh", "show", "dev", "flannel.1"],
            ):
                _say(f"    {' '.join(cmd)}:")
                for line in h.sh(*cmd).splitlines():
                    _say(f"      {line.strip()}")
            if self.backend(i) == "kernel":
                cmd = ["bridge", "fdb", "show", "dev", "flannel.1"]
                out = h.sh(*cmd)
            else:
                cmd = ["vxlanpy-tunnel", "fdb", "show"]
                out = h.sh(sys.executable, "-m", "vxlanpy.cli", "fdb", "show")
            _say(f"    {' '.join(cmd)}:")
            for line in out.splitlines():
                if " dst " in line:
                    _say(f"      {line.strip()}")
        _say(f"  etcdctl get --prefix {PREFIX}/subnets:")
        for line in self.etcd.ctl("get", "--prefix", f"{PREFIX}/subnets").splitlines():
            _say(f"    {line}")

    def teardown(self) -> None:
        for p, _log in self.agents.values():
            self.topo.stop(p, timeout=10)
        self.etcd.stop()
        self.topo.close()


def _read(path: str) -> str:
    return Path(path).read_text(errors="replace")


def run_flannel_lab(a: argparse.Namespace) -> int:
    if a.keep:
        _say("vxlanpy-tunnel: error: --keep is not supported with --control-plane etcd")
        return 1
    total = 7
    with tempfile.TemporaryDirectory(prefix="vxlanpy-flannel-lab-") as tmp:
        lab = _FlannelLab(a, tmp)
        try:
            _say(f"[1/{total}] building {a.hosts} hosts and an etcd member (tag {lab.topo.tag})")
            lab.build()
            _say(f"[2/{total}] starting etcd")
            lab.start_etcd()
            _say(f"[3/{total}] starting the flannel agents (h1 vxlanpy, peers {a.peer})")
            lab.start_agents()
            lab.wait_converged()
            _say(f"[4/{total}] a container behind each host")
            lab.add_containers()
            _say(f"[5/{total}] ping from every container to every other")
            failures = lab.ping_all()
            _say(f"[6/{total}] TCP transfer with iperf3 ({a.seconds:g} s, c1 -> c2)")
            lab.iperf()
            _say(f"[7/{total}] flannel tables and leases")
            lab.show()
            if failures:
                _say(f"FAILED: {failures} ping run(s) lost packets")
                return 1
            return 0
        except (NetnsError, OSError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
            _say(f"lab failed: {exc}")
            return 1
        except KeyboardInterrupt:
            _say("interrupted: tearing down")
            return 130
        finally:
            lab.teardown()
            out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            left = [ns for ns in out.split() if ns.startswith(f"vxp-{lab.topo.tag}-")]
            _say(f"warning: namespaces left: {' '.join(left)}" if left else "      torn down")
