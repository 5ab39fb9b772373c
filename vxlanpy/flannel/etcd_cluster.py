"""etcd members for tests, the lab and benchmarks: Debian's ``etcd-server``, started by PID.

Each member gets its own data directory under ``base_dir`` and listens on ``http://IP:2379``
(clients) and ``:2380`` (peers) inside a network namespace (a ``netns.Host``), or on a loopback
address with free ports when no host is given. ``stop()`` ends every member by PID and removes
the data; ``kill(name)`` is SIGKILL for one (a crash). ``ctl(...)`` runs ``etcdctl`` where the
members are reachable.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..netns import Host, NetnsError, ensure_tools

__all__ = ["EtcdCluster", "EtcdMember", "ensure_etcd", "EtcdClusterError"]


class EtcdClusterError(NetnsError):
    pass


def ensure_etcd() -> None:
    """Install Debian's etcd-server and etcd-client with apt-get if ``etcd`` or ``etcdctl`` is
    missing (as root); EtcdClusterError if they cannot be had."""
    try:
        ensure_tools({"etcd": "etcd-server", "etcdctl": "etcd-client"})
    except NetnsError as exc:
        raise EtcdClusterError(str(exc)) from None


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


@dataclass
class EtcdMember:
    name: str
    ip: str
    host: Host | None
    client_port: int
    peer_port: int
    data_dir: str
    log_path: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://{self.ip}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.ip}:{self.peer_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """``EtcdCluster(base_dir, [(name, ip, host_or_None), ...])``; ``start()``, ``stop()``."""

    def __init__(
        self, base_dir: str, members: Sequence[tuple[str, str, Host | None]], token: str = "vx"
    ) -> None:
        self.base_dir = base_dir
        self.token = token
        self.members: dict[str, EtcdMember] = {}
        for name, ip, host in members:
            client = 2379 if host is not None else _free_port(ip)
            peer = 2380 if host is not None else _free_port(ip)
            self.members[name] = EtcdMember(
                name,
                ip,
                host,
                client,
                peer,
                os.path.join(base_dir, f"{name}.etcd"),
                os.path.join(base_dir, f"{name}.log"),
            )

    @property
    def endpoints(self) -> str:
        """Every member's client URL, comma-separated (for --etcd-endpoints)."""
        return ",".join(m.client_url for m in self.members.values())

    def _argv(self, m: EtcdMember) -> list[str]:
        cluster = ",".join(f"{x.name}={x.peer_url}" for x in self.members.values())
        argv = ["etcd", "--name", m.name, "--data-dir", m.data_dir]
        argv += ["--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url]
        argv += ["--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url]
        argv += ["--initial-cluster", cluster, "--initial-cluster-token", self.token]
        argv += ["--initial-cluster-state", "new", "--logger", "zap", "--log-level", "warn"]
        if m.host is not None:
            argv = ["ip", "netns", "exec", m.host.ns, *argv]
        return argv

    def start(self, timeout: float = 30.0) -> None:
        """Start every member and wait until each answers (EtcdClusterError if not)."""
        ensure_etcd()
        os.makedirs(self.base_dir, exist_ok=True)
        for m in self.members.values():
            self.start_member(m.name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [m.name for m in self.members.values() if not m.alive]
            if dead:
                raise EtcdClusterError(f"etcd {dead[0]} exited:\n{self.log_tail(dead[0])}")
            p = self._ctl(["endpoint", "health"], check=False, timeout=10)
            if p.returncode == 0:
                return
            time.sleep(0.2)
        raise EtcdClusterError(f"etcd did not become healthy in {timeout:g} s: {p.stderr}")

    def start_member(self, name: str) -> None:
        m = self.members[name]
        with open(m.log_path, "ab") as log:
            m.proc = subprocess.Popen(
                self._argv(m), stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
            )

    def log_tail(self, name: str, lines: int = 10) -> str:
        try:
            with open(self.members[name].log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> list[EtcdMember]:
        return [m for m in self.members.values() if m.alive]

    def _ctl(
        self, args: Sequence[str], *, check: bool = True, timeout: float = 20, stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        live = self.alive() or list(self.members.values())
        argv = ["etcdctl", "--endpoints", ",".join(m.client_url for m in live), *args]
        host = live[0].host
        if host is not None:
            argv = ["ip", "netns", "exec", host.ns, *argv]
        env = dict(os.environ, ETCDCTL_API="3")
        p = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, input=stdin
        )
        if check and p.returncode != 0:
            raise EtcdClusterError(f"etcdctl {' '.join(args)}: {p.stderr.strip()}")
        return p

    def ctl(self, *args: str, timeout: float = 20) -> str:
        """Run ``etcdctl ARGS`` against the live members; its output."""
        return self._ctl(args, timeout=timeout).stdout

    def leader(self) -> str:
        """The name of the current leader."""
        out = json.loads(self.ctl("endpoint", "status", "-w", "json"))
        by_url = {m.client_url: m.name for m in self.members.values()}
        for st in out:
            if st["Status"]["header"]["member_id"] == st["Status"]["leader"]:
                return by_url[st["Endpoint"]]
        raise EtcdClusterError("no leader")

    def kill(self, name: str) -> None:
        """SIGKILL one member (by PID): a crash."""
        m = self.members[name]
        if m.proc is not None and m.proc.poll() is None:
            os.killpg(m.proc.pid, signal.SIGKILL)
            m.proc.wait(5)

    def stop(self) -> None:
        """End every member by PID and remove the data directories."""
        for m in self.members.values():
            if m.proc is not None and m.proc.poll() is None:
                os.killpg(m.proc.pid, signal.SIGTERM)
        for m in self.members.values():
            if m.proc is None:
                continue
            try:
                m.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(m.proc.pid, signal.SIGKILL)
                m.proc.wait(5)
        for m in self.members.values():
            shutil.rmtree(m.data_dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
