"""What Prometheus metrics cost a running VTEP: off, on but not scraped, scraped 1 and 10 times
a second, under TCP and 64-byte UDP load (vxlanpy on a, the kernel's vxlan on b; root).

Usage::

    python -m benchmarks.metrics_cost [--reps 3] [--seconds 3] [--peers]

Per mode: TCP 1 stream a->b (Gbit/s) and a's CPU (% of a core), 64-byte UDP a->b as fast as
iperf3 sends (received kpps), and for the scraped modes the scrape's own time (client side, and
``vxlanpy_scrape_snapshot_seconds``). ``--peers``: also the time of one exposition with 1024
peers and 16 VNIs in the snapshot (no root needed). Modes alternate within each repeat, so a
machine that gets busier affects them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import e2e
from benchmarks.e2e import VARIANTS, Pair
from vxlanpy.metrics import exposition

PORT = 9477
URL = f"http://127.0.0.1:{PORT}/metrics"
VARIANTS["vxlanpymetrics"] = ["--metrics", f"127.0.0.1:{PORT}"]
MODES = {"off": ("vxlanpy", 0.0), "on": ("vxlanpymetrics", 0.0)}
MODES |= {"scraped 1/s": ("vxlanpymetrics", 1.0), "scraped 10/s": ("vxlanpymetrics", 10.0)}

SCRAPER = """
import re, sys, time, urllib.request
hz, seconds = float(sys.argv[1]), float(sys.argv[2])
lat, took = [], []
end = time.monotonic() + seconds
while time.monotonic() < end:
    t0 = time.monotonic()
    body = urllib.request.urlopen(sys.argv[3], timeout=5).read().decode()
    lat.append(time.monotonic() - t0)
    took += [float(m) for m in re.findall(r"^vxlanpy_scrape_snapshot_seconds (\\S+)", body, re.M)]
    time.sleep(max(0.0, 1 / hz - (time.monotonic() - t0)))
print(len(lat), 1e3 * sum(lat) / len(lat), 1e3 * sum(took) / max(1, len(took)), len(body))
"""


def measure(pair: Pair, hz: float, seconds: float) -> dict[str, float]:
    scraper = None
    if hz:
        scraper = pair.a.popen(
            [sys.executable, "-c", SCRAPER, str(hz), str(2 * seconds + 8), URL],
            stdout=subprocess.PIPE,
        )
        time.sleep(0.5)
    gbps, cpu = pair.tcp(1, seconds)
    kpps, _loss, _where = pair.udp64(seconds)
    out = {"tcp_gbps": gbps, "cpu": cpu or 0.0, "udp64_kpps": kpps}
    if scraper is not None:
        text, _ = scraper.communicate(timeout=3 * seconds + 30)
        n, client_ms, server_ms, size = text.split()
        out |= {"scrapes": float(n), "client_ms": float(client_ms), "server_ms": float(server_ms)}
        out["bytes"] = float(size)
    return out


def idle_cpu(hz: float, seconds: float) -> tuple[float, int]:
    """CPU ms a VTEP without traffic spends per second, scraped ``hz`` times a second (0: not
    scraped), and the scrapes done: CPU time, not wall time, so a busy machine matters less."""
    pair = Pair("vxlanpymetrics-kernel")
    try:
        c0 = pair.cpu_ticks()
        n = 0
        if hz:
            out = pair.a.sh(sys.executable, "-c", SCRAPER, str(hz), str(seconds), URL)
            n = int(out.split()[0])
        else:
            time.sleep(seconds)
        c1 = pair.cpu_ticks()
        assert c0 is not None and c1 is not None
        return 1e3 * (c1 - c0) / os.sysconf("SC_CLK_TCK") / seconds, n
    finally:
        pair.close()


def peers_exposition() -> tuple[float, int]:
    """ms per exposition of a snapshot with 1024 peers and 16 VNIs, and its size."""
    seg: dict[str, Any] = {k: 1 for k in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")}
    seg |= dict.fromkeys(
        ("floods", "l2_misses", "l3_misses", "arp_proxied", "learned", "moved", "aged"), 1
    )
    seg |= {"learn_refused": 0, "dropped": 2, "drops": {"no-destination": 2}}
    peer = dict.fromkeys(("tx_packets", "tx_bytes", "rx_packets", "rx_bytes"), 7)
    sizes = {"sizes": {str(1 << k): k for k in range(11)}, "frames": 100}
    st: dict[str, Any] = {
        "segments": {v: seg for v in range(16)},
        "unattributed": {"drops": {"too-short": 1}},
        "losses": {"send": 0, "total": 0},
        "fast_path_packets": {v: {"rx": 1, "tx": 1} for v in range(16)},
        "peers": {f"198.18.{k // 250}.{k % 250 + 1}": peer for k in range(1024)},
        "tables": {v: {"fdb": 1, "learned": 1, "flood": 1, "neigh": 0} for v in range(16)},
        "batches": {"tx": sizes, "rx": sizes},
        "socket_errors": {},
        "icmp": {},
        "tap_write_errors": {"vx0": 0},
        "tap_queue_dropped": {"vx0": 0},
        "gro": {"receives": 0},
        "fast_path": True,
    }
    st |= dict.fromkeys(
        ("events_lost", "checksums_completed", "gso_frames", "gso_errors", "send_thread_frames"),
        0,
    )
    size = len(exposition(lambda: st))
    t0 = time.perf_counter()
    for _ in range(20):
        exposition(lambda: st)
    return (time.perf_counter() - t0) / 20 * 1e3, size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--peers", action="store_true")
    ap.add_argument("--idle", action="store_true", help="CPU per scrape of an idle VTEP")
    ap.add_argument("--baseline", help="a checkout with its own .venv: adds mode 'baseline'")
    a = ap.parse_args(argv)
    if a.baseline:
        e2e.BASELINE = Path(a.baseline).resolve()
        MODES["baseline"] = ("baseline", 0.0)
    if a.idle:
        base, _ = idle_cpu(0, 10)
        for hz in (10.0, 50.0):
            busy, n = idle_cpu(hz, 10)
            print(
                f"idle VTEP: {base:.1f} CPU ms/s not scraped, {busy:.1f} scraped {hz:g}/s "
                f"({n} scrapes): {(busy - base) * 10 / max(1, n):.2f} CPU ms per scrape"
            )
    if a.peers:
        ms, size = peers_exposition()
        print(f"exposition of 1024 peers, 16 VNIs: {ms:.1f} ms, {size} bytes")
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for rep in range(a.reps):
        for mode, (impl, hz) in MODES.items():
            pair = Pair(f"{impl}-kernel")
            try:
                results[mode].append(measure(pair, hz, a.seconds))
            finally:
                pair.close()
            print(f"rep {rep + 1} {mode}: {json.dumps(results[mode][-1])}", file=sys.stderr)
    print(f"command: python -m benchmarks.metrics_cost {' '.join(argv or sys.argv[1:])}")
    print("| mode | TCP Gbit/s | CPU % | UDP-64 kpps | scrape ms (client / snapshot) |")
    print("|---|---|---|---|---|")
    for mode, rows in results.items():

        def med(k: str, rows: list[dict[str, float]] = rows) -> float:
            return statistics.median(r[k] for r in rows)

        scrape = (
            f"{med('client_ms'):.2f} / {med('server_ms'):.2f}" if "client_ms" in rows[0] else ""
        )
        print(
            f"| {mode} | {med('tcp_gbps'):.2f} | {med('cpu'):.0f} | {med('udp64_kpps'):.0f} | "
            f"{scrape} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
