"""``vxlanpy-tunnel lab``: a two- or three-host overlay in network namespaces, tested end to end.

Host h1 runs vxlanpy; the peers run the Linux kernel's vxlan (``--peer kernel``) or vxlanpy.
The lab pings across the overlay, runs a TCP transfer (iperf3), prints RTT, rate, both sides'
FDB and neighbour tables and vxlanpy's counters, and tears everything down (also on Ctrl-C or
failure). ``--keep`` leaves it up; ``--stop TAG`` removes a kept lab.

Addresses: underlay 198.18.0.<n>/24, overlay 198.19.0.<n>/24, host n = 1, 2, 3.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from .control import DEFAULT_DIR, ControlError, request
from .netns import Host, NetnsError, Topology, have_netns
from .render import fdb_line, neigh_line, stats_text

__all__ = ["main", "run_lab"]


def _say(msg: str) -> None:
    print(msg, flush=True)


def _step(n: int, total: int, msg: str) -> None:
    _say(f"[{n}/{total}] {msg}")


def _underlay(n: int) -> str:
    return f"198.18.0.{n}"


def _overlay(n: int) -> str:
    return f"198.19.0.{n}"


class _Lab:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.topo = Topology()
        self.tag = self.topo.tag
        self.hosts: list[Host] = []
        self.vx: dict[str, tuple[subprocess.Popen[bytes], str, str]] = {}  # host -> proc, log, sock

    # -- building ----------------------------------------------------------------------------

    def build(self) -> None:
        n = self.a.hosts
        self.hosts = [self.topo.add_host(f"h{i + 1}") for i in range(n)]
        if n == 2:
            self.dev = self.topo.link(
                self.hosts[0], self.hosts[1], f"{_underlay(1)}/24", f"{_underlay(2)}/24"
            )
        else:
            self.dev = self.topo.switch(self.hosts, [f"{_underlay(i + 1)}/24" for i in range(n)])

    def start_vxlanpy(self, idx: int) -> None:
        h = self.hosts[idx]
        os.makedirs(DEFAULT_DIR, mode=0o700, exist_ok=True)
        sock = os.path.join(DEFAULT_DIR, f"lab-{self.tag}-{h.name}.sock")
        logf = os.path.join(DEFAULT_DIR, f"lab-{self.tag}-{h.name}.log")
        others = [_underlay(i + 1) for i in range(len(self.hosts)) if i != idx]
        argv = [sys.executable, "-m", "vxlanpy.cli", "run", "--vni", str(self.a.vni)]
        argv += ["--dstport", str(self.a.dstport), "--local", _underlay(idx + 1)]
        for r in others:
            argv += ["--remote", r]
        argv += ["--tap", "vx0", "--address", f"{_overlay(idx + 1)}/24", "--control", sock]
        with open(logf, "wb") as log:
            p = h.popen(argv, stdout=log, stderr=log, start_new_session=True)
        self.vx[h.name] = (p, logf, sock)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = _read(logf)
            if "listening on" in text:
                _say("      " + text.splitlines()[0])
                return
            if p.poll() is not None:
                raise NetnsError(f"vxlanpy on {h.name} exited:\n{text}")
            time.sleep(0.05)
        raise NetnsError(f"vxlanpy on {h.name} did not start in 20 s:\n{_read(logf)}")

    def start_kernel(self, idx: int) -> None:
        h = self.hosts[idx]
        self.topo.kernel_vxlan(
            h,
            vni=self.a.vni,
            dev=self.dev,
            dstport=self.a.dstport,
            local=_underlay(idx + 1),
            address=f"{_overlay(idx + 1)}/24",
        )
        for i in range(len(self.hosts)):
            if i != idx:  # head-end replication list, as vxlanpy's --remote
                zero = ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx0"]
                h.sh(*zero, "dst", _underlay(i + 1))
        _say(f"      kernel vxlan on {h.name}: vx0 id {self.a.vni} dstport {self.a.dstport}")

    # -- measuring ---------------------------------------------------------------------------

    def ping(self, src: Host, dst_ip: str) -> tuple[float, str]:
        out = src.sh("ping", "-c", "5", "-i", "0.2", "-W", "2", dst_ip, check=False)
        loss = re.search(r"(\d+(?:\.\d+)?)% packet loss", out)
        rtt = re.search(r"= [\d.]+/([\d.]+)/", out)
        lost = float(loss.group(1)) if loss else 100.0
        avg = rtt.group(1) + " ms" if rtt else "n/a"
        return lost, avg

    def iperf(self, client: Host, server: Host, dst_ip: str, reverse: bool = False) -> float:
        if shutil.which("iperf3") is None:
            raise NetnsError("iperf3 is not installed (make lab installs it with apt-get)")
        srv = server.popen(
            ["iperf3", "-s", "-1", "-B", dst_ip],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            out = ""
            for _ in range(50):  # the server needs a moment to listen
                out = client.sh(
                    "iperf3",
                    "-c",
                    dst_ip,
                    "-t",
                    str(self.a.seconds),
                    "-J",
                    *(["-R"] if reverse else []),
                    check=False,
                    timeout=self.a.seconds + 30,
                )
                if '"error"' not in out:
                    break
                time.sleep(0.1)
            data = json.loads(out)
            if "error" in data:
                raise NetnsError(f"iperf3: {data['error']}")
            return float(data["end"]["sum_received"]["bits_per_second"])
        finally:
            self.topo.stop(srv)

    # -- showing -----------------------------------------------------------------------------

    def show_tables(self, h: Host) -> None:
        if h.name in self.vx:
            sock = self.vx[h.name][2]
            _say(f"  {h.name} (vxlanpy) vxlanpy-tunnel fdb show:")
            for row in request(sock, {"cmd": "fdb", "op": "show"}):
                _say("    " + fdb_line(row))
            _say(f"  {h.name} (vxlanpy) vxlanpy-tunnel neigh show:")
            rows = request(sock, {"cmd": "neigh", "op": "show"})
            for row in rows:
                _say("    " + neigh_line(row))
            if not rows:
                _say("    (empty: proxy off; the host's own ARP cache follows)")
            _say(f"  {h.name} ip neigh show dev vx0:")
            for line in h.sh("ip", "neigh", "show", "dev", "vx0").splitlines():
                _say("    " + line)
            _say(f"  {h.name} (vxlanpy) vxlanpy-tunnel stats:")
            for line in stats_text(request(sock, {"cmd": "stats"})).splitlines():
                _say("    " + line)
        else:
            _say(f"  {h.name} (kernel) bridge fdb show dev vx0:")
            for line in h.sh("bridge", "fdb", "show", "dev", "vx0").splitlines():
                _say("    " + line)
            _say(f"  {h.name} (kernel) ip neigh show dev vx0:")
            for line in h.sh("ip", "neigh", "show", "dev", "vx0").splitlines():
                _say("    " + line)

    # -- tearing down ------------------------------------------------------------------------

    def teardown(self) -> None:
        for p, _log, sock in self.vx.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
            for f in (sock, _log):
                if os.path.exists(f):
                    os.unlink(f)
        self.topo.close()

    def save_state(self) -> str:
        path = os.path.join(DEFAULT_DIR, f"lab-{self.tag}.json")
        state = {
            "namespaces": [h.ns for h in self.topo.hosts.values()],
            "pids": [p.pid for p, _, _ in self.vx.values()],
            "files": [f for _, log, sock in self.vx.values() for f in (log, sock)],
        }
        with open(path, "w") as f:
            json.dump(state, f)
        return path


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def run_lab(a: argparse.Namespace) -> int:
    total = 6
    lab = _Lab(a)
    ok = False
    try:
        _step(1, total, f"building {a.hosts} hosts as network namespaces (tag {lab.tag})")
        lab.build()
        _step(2, total, f"starting vxlanpy on h1 and {a.peer} VTEPs on the peers (VNI {a.vni})")
        lab.start_vxlanpy(0)
        for i in range(1, a.hosts):
            lab.start_vxlanpy(i) if a.peer == "vxlanpy" else lab.start_kernel(i)
        h1 = lab.hosts[0]
        _step(3, total, "ping across the overlay")
        failures = 0
        for i, h in enumerate(lab.hosts[1:], start=2):
            for src, dst, ip in ((h1, h, _overlay(i)), (h, h1, _overlay(1))):
                lost, rtt = lab.ping(src, ip)
                _say(f"      {src.name} -> {dst.name} ({ip}): {lost:g}% loss, rtt avg {rtt}")
                failures += lost > 0
        _step(4, total, f"TCP transfer with iperf3 ({a.seconds:g} s each way, h1 <-> h2)")
        h2 = lab.hosts[1]
        tx = lab.iperf(h1, h2, _overlay(2))
        rx = lab.iperf(h1, h2, _overlay(2), reverse=True)
        _say(f"      h1 -> h2: {tx / 1e6:.0f} Mbit/s;  h2 -> h1: {rx / 1e6:.0f} Mbit/s")
        _step(5, total, "tables and counters")
        for h in lab.hosts:
            lab.show_tables(h)
        if failures:
            _say(f"FAILED: {failures} ping run(s) lost packets")
            return 1
        ok = True
        if a.keep:
            state = lab.save_state()
            _step(6, total, "lab left up (--keep)")
            for h in lab.hosts:
                _say(f"      enter {h.name}: ip netns exec {h.ns} bash")
            sock = lab.vx["h1"][2]
            _say(f"      inspect:  vxlanpy-tunnel fdb show --control {sock}")
            _say(f"      stop:     vxlanpy-tunnel lab --stop {lab.tag}   (state in {state})")
        else:
            _step(6, total, "tearing down")
        return 0
    except (NetnsError, ControlError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
        _say(f"lab failed: {exc}")
        for _h, (_p, log, _s) in lab.vx.items():
            tail = _read(log).splitlines()[-5:]
            if tail:
                _say(f"  last lines of vxlanpy on {_h}:\n    " + "\n    ".join(tail))
        return 1
    except KeyboardInterrupt:
        _say("interrupted: tearing down")
        return 130
    finally:
        if not (ok and a.keep):
            lab.teardown()
            left = [h for h in _namespaces() if h.startswith(f"vxp-{lab.tag}-")]
            if left:
                _say(f"warning: namespaces left behind: {' '.join(left)}")
            elif ok:
                _say("      done: no namespace, link or process left behind")


def _namespaces() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except OSError:
        return []


def stop_lab(tag: str) -> int:
    path = os.path.join(DEFAULT_DIR, f"lab-{tag}.json")
    try:
        with open(path) as f:
            state: dict[str, Any] = json.load(f)
    except (OSError, ValueError):
        _say(f"no kept lab with tag {tag} ({path} not found)")
        return 1
    for pid in state.get("pids", []):
        try:
            os.kill(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass
    time.sleep(1.0)
    for ns in state.get("namespaces", []):
        if ns.startswith(f"vxp-{tag}-"):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for f in [*state.get("files", []), path]:
        if os.path.exists(f):
            os.unlink(f)
    _say(f"lab {tag} removed")
    return 0


def main(a: argparse.Namespace) -> int:
    if not have_netns():
        _say("vxlanpy-tunnel: error: the lab needs root, iproute2 and /dev/net/tun")
        return 1
    if a.stop:
        return stop_lab(a.stop)
    if getattr(a, "control_plane", "static") == "etcd":
        from .flannel.lab import run_flannel_lab

        return run_flannel_lab(a)
    return run_lab(a)
