"""Network-namespace topologies for labs and tests: hosts, veth underlays, kernel VTEPs.

Everything a :class:`Topology` creates carries a unique tag and is removed by ``close()``
(also on failure: use it as a context manager). Processes it starts are ended by PID.
The topology is built with the iproute2 commands an engineer would type (they are echoed in
``commands`` so a lab can be reproduced by hand); their output is never parsed.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Topology", "Host", "NetnsError", "have_netns"]


class NetnsError(Exception):
    pass


def have_netns() -> bool:
    """True when this process can create network namespaces and TAPs (root with iproute2)."""
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        return False
    return subprocess.run(["ip", "-V"], capture_output=True).returncode == 0


@dataclass
class Host:
    name: str  # short name used in output ("a", "b", ...)
    ns: str  # the namespace
    topo: Topology
    underlay: dict[str, str] = field(default_factory=dict)  # dev -> address

    def sh(self, *argv: str, check: bool = True, timeout: float = 60) -> str:
        return self.topo.run(["ip", "netns", "exec", self.ns, *argv], check=check, timeout=timeout)

    def ip(self, *args: str, check: bool = True) -> str:
        return self.topo.run(["ip", "-n", self.ns, *args], check=check)

    def popen(self, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        return self.topo.spawn(["ip", "netns", "exec", self.ns, *argv], **kw)

    def no_ipv6(self) -> None:
        """No IPv6 in the namespace, for devices made after this call: no router solicitations
        or MLD reports sent on their own when a device comes up, so the only frames are the
        ones the caller sends."""
        for key in ("all", "default"):
            self.sh("sysctl", "-q", "-w", f"net.ipv6.conf.{key}.disable_ipv6=1")


class Topology:
    """A set of namespaces joined by veth links. Use ``with Topology() as t:``."""

    def __init__(self, tag: str | None = None, echo: bool = False) -> None:
        self.tag = tag or secrets.token_hex(3)
        self.hosts: dict[str, Host] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.commands: list[str] = []
        self.echo = echo
        self._links = 0

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 60) -> str:
        cmd = " ".join(shlex.quote(a) for a in argv)
        self.commands.append(cmd)
        if self.echo:
            print(f"  $ {cmd}", file=sys.stderr)
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise NetnsError(f"{cmd}: {p.stderr.strip() or p.stdout.strip()}")
        return p.stdout

    def add_host(self, name: str) -> Host:
        ns = f"vxp-{self.tag}-{name}"
        self.run(["ip", "netns", "add", ns])
        h = Host(name, ns, self)
        self.hosts[name] = h
        h.ip("link", "set", "lo", "up")
        return h

    def link(self, a: Host, b: Host, addr_a: str, addr_b: str, mtu: int | None = None) -> str:
        """A veth pair between ``a`` and ``b`` (both ends named ``u<N>``) with CIDR addresses."""
        dev = f"u{self._links}"
        self._links += 1
        self.run(
            ["ip", "link", "add", dev, "netns", a.ns, "type", "veth", "peer", "name", dev]
            + ["netns", b.ns]
        )
        for h, addr in ((a, addr_a), (b, addr_b)):
            if mtu:
                h.ip("link", "set", dev, "mtu", str(mtu))
            h.ip("addr", "add", addr, "dev", dev, *(["nodad"] if ":" in addr else []))
            h.ip("link", "set", dev, "up")
            h.underlay[dev] = addr.split("/")[0]
        return dev

    def switch(self, hosts: Sequence[Host], addrs: Sequence[str]) -> str:
        """Several hosts on one L2 underlay: a bridge in its own namespace, a veth per host."""
        sw = self.add_host("sw")
        sw.ip("link", "add", "br0", "type", "bridge")
        sw.ip("link", "set", "br0", "up")
        dev = f"u{self._links}"
        self._links += 1
        for i, (h, addr) in enumerate(zip(hosts, addrs, strict=True)):
            port = f"p{i}"
            self.run(
                ["ip", "link", "add", dev, "netns", h.ns, "type", "veth", "peer", "name", port]
                + ["netns", sw.ns]
            )
            sw.ip("link", "set", port, "master", "br0")
            sw.ip("link", "set", port, "up")
            h.ip("addr", "add", addr, "dev", dev, *(["nodad"] if ":" in addr else []))
            h.ip("link", "set", dev, "up")
            h.underlay[dev] = addr.split("/")[0]
        return dev

    def kernel_vxlan(
        self,
        h: Host,
        *,
        vni: int,
        dev: str,
        dstport: int = 4789,
        remote: str | None = None,
        group: str | None = None,
        local: str | None = None,
        address: str | None = None,
        name: str = "vx0",
        learning: bool = True,
        proxy: bool = False,
        extra: Sequence[str] = (),
    ) -> str:
        """A Linux vxlan device in ``h`` (the reference peer)."""
        args = ["link", "add", name, "type", "vxlan", "id", str(vni), "dstport", str(dstport)]
        if remote:
            args += ["remote", remote]
        if group:
            args += ["group", group]
        if local:
            args += ["local", local]
        args += ["dev", dev]
        if not learning:
            args.append("nolearning")
        if proxy:
            args.append("proxy")
        args += list(extra)
        h.ip(*args)
        if address:
            h.ip("addr", "add", address, "dev", name, *(["nodad"] if ":" in address else []))
        h.ip("link", "set", name, "up")
        return name

    def spawn(self, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        p: subprocess.Popen[bytes] = subprocess.Popen(list(argv), **kw)  # type: ignore[call-overload]
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
        """SIGTERM the process we started, then SIGKILL after ``timeout``; its exit code."""
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        return int(p.returncode)

    def close(self) -> None:
        """End our processes (by PID) and delete our namespaces with everything in them."""
        for p in self.procs:  # SIGTERM first, so that they clean up (sockets, TAPs)
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.wait(3)
                except subprocess.TimeoutExpired:
                    p.kill()
                    try:
                        p.wait(5)
                    except subprocess.TimeoutExpired:
                        pass
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    stream.close()
        self.procs.clear()
        for h in list(self.hosts.values()):
            subprocess.run(["ip", "netns", "del", h.ns], capture_output=True)
        self.hosts.clear()


def ensure_tools(tools: dict[str, str]) -> None:
    """Install the Debian packages of the commands in ``tools`` (command -> package) that are
    not on PATH, with apt-get (as root); NetnsError if they cannot be had."""
    missing = sorted({pkg for cmd, pkg in tools.items() if shutil.which(cmd) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise NetnsError(f"not installed: {', '.join(missing)} (apt-get install them)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
        if p.returncode != 0:
            raise NetnsError(f"{' '.join(argv)}: {p.stderr.strip()[-300:]}")
    still = [cmd for cmd in tools if shutil.which(cmd) is None]
    if still:
        raise NetnsError(f"installed {', '.join(missing)} but not on PATH: {', '.join(still)}")


def wait_for(pred: object, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``pred()`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False
