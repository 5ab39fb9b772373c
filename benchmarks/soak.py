"""Soak: vxlanpy <-> the kernel's vxlan at a fixed UDP rate for a long time (``make soak``).

``python -m benchmarks.soak [--seconds S] [--kpps R] [--size BYTES] [--json FILE]``

iperf3 sends UDP at R kpps from a (vxlanpy) to b (the kernel's vxlan) for S seconds. Meanwhile
vxlanpy's RSS is sampled every second. At the end every datagram is accounted for: what
vxlanpy sent (its tx) must equal what the peer's vxlan device received (its rx in ``ip -s
link``), and the datagrams iperf3 lost must be those dropped at a counted place (a's TAP
queue, vxlanpy's counters, b's socket and device counters). vxlanpy's log must hold no
traceback and no error line. Exit 0 when all of that holds; the figures go to stdout (and
``--json``). ``tests/netns/test_soak.py`` runs a short one in CI.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from vxlanpy.control import request
from vxlanpy.netns import Host, Topology

UA, UB, OA, OB = "198.18.0.1", "198.18.0.2", "198.19.0.1", "198.19.0.2"
VNI = 42


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _link(h: Host, dev: str) -> dict[str, int]:
    st = json.loads(h.sh("ip", "-s", "-j", "link", "show", dev))[0]["stats64"]
    return {f"{d}_{k}": int(v) for d in ("rx", "tx") for k, v in st[d].items()}


def _nstat(h: Host) -> dict[str, int]:
    out = json.loads(h.sh("nstat", "-a", "-z", "-j", check=False) or "{}")
    return {k: int(v) for k, v in out.get("kernel", {}).items()}


def run(seconds: float, kpps: float, size: int = 256, log: Any = None) -> dict[str, Any]:
    """One soak; returns the figures and ``failures`` (empty when everything held)."""
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    with Topology() as topo:
        a, b = topo.add_host("a"), topo.add_host("b")
        a.no_ipv6()
        b.no_ipv6()
        dev = topo.link(a, b, f"{UA}/24", f"{UB}/24")
        topo.kernel_vxlan(b, vni=VNI, dev=dev, remote=UA, local=UB, address=f"{OB}/24")
        sock = f"/run/vxlanpy/soak-{topo.tag}.sock"
        argv = [sys.executable, "-m", "vxlanpy.cli", "run", "--vni", str(VNI), "--local", UA]
        argv += ["--remote", UB, "--tap", "vx0", "--address", f"{OA}/24", "--control", sock]
        vx = a.popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        lines: list[str] = []

        def read() -> None:
            assert vx.stderr is not None
            for raw in vx.stderr:
                lines.append(raw.decode(errors="replace").rstrip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        for _ in range(100):
            if any("listening on" in line for line in lines):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("vxlanpy did not start: " + "\n".join(lines))
        for _ in range(50):
            if " 0% packet loss" in a.sh("ping", "-c", "1", "-W", "1", OB, check=False):
                break
        srv = b.popen(["iperf3", "-s", "-1", "-B", OB, "-J"], stdout=subprocess.PIPE)
        time.sleep(0.5)
        a0, b0, n0 = _link(a, "vx0"), _link(b, "vx0"), _nstat(b)
        st0 = request(sock, {"cmd": "stats"})
        bps = str(round(kpps * 1000 * size * 8))
        say(f"soak: {kpps:g} kpps of {size}-byte UDP for {seconds:g} s, a (vxlanpy) -> b (kernel)")
        client = a.popen(
            ["iperf3", "-c", OB, "-u", "-b", bps, "-l", str(size), "-t", str(seconds), "-J"],
            stdout=subprocess.PIPE,
        )
        rss: list[tuple[float, int]] = []
        t0 = time.monotonic()
        while client.poll() is None and time.monotonic() - t0 < seconds + 60:
            rss.append((round(time.monotonic() - t0, 1), _rss_kb(vx.pid)))
            time.sleep(1.0)
        cout, _ = client.communicate(timeout=30)
        sout, _ = srv.communicate(timeout=30)
        time.sleep(0.5)
        a1, b1, n1 = _link(a, "vx0"), _link(b, "vx0"), _nstat(b)
        st1 = request(sock, {"cmd": "stats"})
        code = topo.stop(vx)
        reader.join(5)
    sent_c = json.loads(cout)["end"]["sum"]
    got_s = json.loads(sout)["end"]["sum"]
    seg0, seg1 = st0["segments"][str(VNI)], st1["segments"][str(VNI)]
    tx = seg1["tx_packets"] - seg0["tx_packets"]
    peer_rx = b1["rx_packets"] - b0["rx_packets"]

    def delta(key: str, new: dict[str, int], old: dict[str, int]) -> int:
        return new.get(key, 0) - old.get(key, 0)

    tap_dropped = delta("tx_dropped", a1, a0)  # the kernel's TAP queue on a, towards vxlanpy
    drops = {
        "a TAP queue (tx_dropped)": tap_dropped,
        "vxlanpy dropped": seg1["dropped"] - seg0["dropped"],
        "vxlanpy socket errors": sum(st1["socket_errors"].values())
        - sum(st0["socket_errors"].values()),
        "b vxlan rx_dropped": delta("rx_dropped", b1, b0),
        "b vxlan rx_errors": delta("rx_errors", b1, b0),
        "b UDP receive buffer": delta("UdpRcvbufErrors", n1, n0),
    }
    steady = [kb for t, kb in rss if t >= min(10.0, seconds / 4)]
    out: dict[str, Any] = {
        "seconds": seconds,
        "kpps": kpps,
        "size": size,
        "iperf_sent": sent_c["packets"],
        "iperf_received": got_s["packets"] - got_s["lost_packets"],
        "iperf_lost": got_s["lost_packets"],
        "loss_percent": got_s["lost_percent"],
        "vxlanpy_tx": tx,
        "peer_rx": peer_rx,
        "drops": drops,
        "rss_kb_first": steady[0] if steady else None,
        "rss_kb_last": steady[-1] if steady else None,
        "rss_kb_min": min(steady) if steady else None,
        "rss_kb_max": max(steady) if steady else None,
        "rss_samples": len(rss),
        "exit_code": code,
    }
    failures = []
    if tx != peer_rx:
        failures.append(f"vxlanpy sent {tx} datagrams, the peer's vxlan received {peer_rx}")
    if got_s["lost_packets"] > sum(drops.values()):
        failures.append(f"{got_s['lost_packets']} lost, only {sum(drops.values())} counted")
    if steady and max(steady) - steady[0] > 8 * 1024:
        failures.append(f"RSS grew {max(steady) - steady[0]} kB in steady state")
    if code != 0:
        failures.append(f"vxlanpy exited {code}")
    bad = [line for line in lines if "Traceback" in line or ": error:" in line]
    if bad:
        failures.append("vxlanpy logged: " + " | ".join(bad[:5]))
    out["failures"] = failures
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--kpps", type=float, default=20.0, help="offered UDP rate, kpps")
    p.add_argument("--size", type=int, default=256, help="UDP payload bytes")
    p.add_argument("--json", help="write the figures here too")
    a = p.parse_args(argv)
    out = run(a.seconds, a.kpps, a.size)
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    for f in out["failures"]:
        print(f"soak: FAILED: {f}", file=sys.stderr)
    return 1 if out["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
