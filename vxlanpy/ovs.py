"""Open vSwitch's userspace datapath as a VXLAN peer, inside a network namespace (tests, bench).

:class:`OvsVtep` starts an ``ovsdb-server`` and an ``ovs-vswitchd --disable-system`` (the
userspace datapath only: nothing reaches the kernel's openvswitch module) in a namespace of
a :class:`~vxlanpy.netns.Topology`, with run, db and log directories of their own
(``OVS_RUNDIR``, ``OVS_DBDIR``, ``OVS_LOGDIR`` for every command), so the host's Open vSwitch
(if any) is never touched; both processes are the topology's and are ended by PID. The
layout is OVS's userspace tunnelling one:

- ``br-phy`` (netdev bridge) holds the underlay veth and the underlay address on its internal
  port: OVS reads the veth's frames itself (raw bytes, with an AF_PACKET socket) and
  recognises VXLAN to its address;
- ``br-int`` (netdev bridge) holds the ``vxlan`` port (``remote_ip``, ``key`` = VNI,
  ``dst_port``, ``csum``) and, on its internal port (a TAP), the overlay address.

The Debian package (``openvswitch-switch``) is installed by :func:`ensure_ovs` when missing,
with its service kept from starting (a ``policy-rc.d`` that denies it, unless one is there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from .netns import Host, NetnsError, wait_for

__all__ = ["OvsVtep", "ensure_ovs", "SCHEMA"]

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
_POLICY = Path("/usr/sbin/policy-rc.d")


def ensure_ovs() -> None:
    """Install ``openvswitch-switch`` with apt-get if ``ovs-vswitchd`` is missing, without
    letting the package start its service; NetnsError if it cannot be had."""
    if shutil.which("ovs-vswitchd") and shutil.which("ovsdb-tool") and Path(SCHEMA).exists():
        return
    if os.geteuid() != 0:
        raise NetnsError("not installed: openvswitch-switch (apt-get install it)")
    ours = not _POLICY.exists()
    if ours:  # invoke-rc.d asks it: 101 = "action not allowed", so nothing is started
        _POLICY.write_text("#!/bin/sh\nexit 101\n")
        _POLICY.chmod(0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        for argv in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "openvswitch-switch"],
        ):
            p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
            if p.returncode != 0:
                raise NetnsError(f"{' '.join(argv)}: {p.stderr.strip()[-300:]}")
    finally:
        if ours:
            _POLICY.unlink(missing_ok=True)
    if not shutil.which("ovs-vswitchd"):
        raise NetnsError("installed openvswitch-switch but ovs-vswitchd is not on PATH")


class OvsVtep:
    """An OVS userspace VTEP in ``host``: underlay ``dev`` (a veth with ``local`` on it) and
    a vxlan port to ``remote``; the overlay address ``address`` (CIDR) on br-int."""

    def __init__(
        self,
        host: Host,
        workdir: Path,
        *,
        dev: str,
        local: str,
        plen: int,
        remote: str,
        vni: int,
        address: str,
        dstport: int = 4789,
        csum: bool = False,
        mtu: int | None = None,
    ) -> None:
        """``csum``: OVS's ``options:csum`` (outer UDP checksums on send; off: zero);
        ``mtu``: br-int's (default: the underlay's minus the VXLAN overhead)."""
        self.host = host
        self.dir = workdir
        for sub in ("run", "db", "log"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        run = workdir / "run"
        self.env = dict(
            os.environ,
            OVS_RUNDIR=str(run),
            OVS_DBDIR=str(workdir / "db"),
            OVS_LOGDIR=str(workdir / "log"),
            OVS_SYSCONFDIR=str(workdir / "db"),
        )
        self.db = f"unix:{run}/db.sock"
        db = workdir / "db" / "conf.db"
        subprocess.run(["ovsdb-tool", "create", str(db), SCHEMA], check=True, capture_output=True)
        log = workdir / "log"
        self.ovsdb = host.popen(
            ["ovsdb-server", str(db), f"--remote=punix:{run}/db.sock"]
            + [f"--pidfile={run}/ovsdb-server.pid", f"--unixctl={run}/ovsdb-server.ctl"]
            + [f"--log-file={log}/ovsdb-server.log"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_for(lambda: (run / "db.sock").exists(), 10):
            raise NetnsError(f"ovsdb-server did not start (log: {log}/ovsdb-server.log)")
        self.vsctl("--no-wait", "init")
        self.vswitchd = host.popen(
            ["ovs-vswitchd", self.db, "--disable-system"]
            + [f"--pidfile={run}/ovs-vswitchd.pid", f"--unixctl={run}/ovs-vswitchd.ctl"]
            + [f"--log-file={log}/ovs-vswitchd.log"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_for(lambda: (run / "ovs-vswitchd.ctl").exists(), 15):
            raise NetnsError(f"ovs-vswitchd did not start (log: {log}/ovs-vswitchd.log)")
        v6 = ":" in local
        over = 70 if v6 else 50
        mac = host.sh("cat", f"/sys/class/net/{dev}/address").strip()
        base = int(host.sh("cat", f"/sys/class/net/{dev}/mtu"))
        host.ip("addr", "flush", "dev", dev)
        # OVS reads the veth with an AF_PACKET socket, which sees frames before the netdev
        # ingress hook: dropping them there keeps the host's own stack from answering them
        # too (a port unreachable for every VXLAN datagram: nothing in it listens there)
        rule = f"table netdev ovs_{dev} {{ chain rx {{ type filter hook ingress device {dev} "
        host.sh("nft", rule + "priority 0; policy drop; }; }")
        self.vsctl("add-br", "br-phy", "--", "set", "bridge", "br-phy", "datapath_type=netdev")
        self.vsctl("set", "bridge", "br-phy", f"other_config:hwaddr={mac}")
        self.vsctl("add-port", "br-phy", dev)
        self.vsctl("add-br", "br-int", "--", "set", "bridge", "br-int", "datapath_type=netdev")
        opts = [f"options:remote_ip={remote}", f"options:key={vni}"]
        opts += [f"options:dst_port={dstport}", f"options:csum={'true' if csum else 'false'}"]
        self.vsctl(
            "add-port", "br-int", "vxlan0", "--", "set", "interface", "vxlan0", "type=vxlan", *opts
        )
        self.vsctl("set", "interface", "br-int", f"mtu_request={mtu or base - over}")
        for br in ("br-phy", "br-int"):
            if not wait_for(lambda br=br: _exists(host, br), 10):
                raise NetnsError(f"OVS did not create {br} (log: {log}/ovs-vswitchd.log)")
        host.ip("addr", "add", f"{local}/{plen}", "dev", "br-phy", *(["nodad"] if v6 else []))
        host.ip("link", "set", "br-phy", "up")
        host.ip("addr", "add", address, "dev", "br-int", *(["nodad"] if ":" in address else []))
        host.ip("link", "set", "br-int", "up")
        time.sleep(0.5)  # OVS reads the new route and addresses from netlink

    def vsctl(self, *args: str) -> str:
        return self.host.sh("env", *_env_args(self.env), "ovs-vsctl", f"--db={self.db}", *args)

    def appctl(self, *args: str) -> str:
        ctl = f"{self.env['OVS_RUNDIR']}/ovs-vswitchd.ctl"
        return self.host.sh("ovs-appctl", "-t", ctl, *args, check=False)

    def drops(self) -> dict[str, int]:
        """OVS's drop counters (``coverage/show``'s ``datapath_drop_*``), non-zero ones."""
        out: dict[str, int] = {}
        for line in self.appctl("coverage/show").splitlines():
            parts = line.split()
            if parts and parts[0].startswith("datapath_drop") and parts[-1].isdigit():
                total = int(parts[-1])
                if total:
                    out[parts[0]] = total
        return out


def _exists(host: Host, dev: str) -> bool:
    return bool(host.ip("link", "show", dev, check=False).strip())


def _env_args(env: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in env.items() if k.startswith("OVS_")]
