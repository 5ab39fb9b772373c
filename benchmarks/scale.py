"""Scaling benchmark: what vxlanpy costs as the work grows, against the kernel's vxlan.

``python -m benchmarks scale [--quick] [--reps N] [--seconds S] [--sweeps ...] [--no-kernel]
[--out DIR]`` (root; ``make scale``). Host a runs vxlanpy (benchmarks/scale_vtep.py: ``Vtep``
and its control socket), host b the kernel's vxlan, over a veth underlay in fresh namespaces.
Four sweeps:

- vnis: 1, 16, 256 VNIs on one VTEP (b has a vxlan device per VNI): TCP throughput (4 iperf3
  streams to 4 VNIs spread over the range), and the rate of 64-byte and 1400-byte UDP frames
  spread round-robin over every VNI;
- flood: flooding to 1, 8, 64 remotes (addresses on b's underlay device, all received by one
  vxlan device): broadcast frames (flooded in C) and unknown unicast (an L2 miss: flooded by
  the engine); frames flooded per second, copies the peer counted, CPU per copy;
- fdb: 10^3, 10^5, 10^6 static FDB entries (installed in bulk through the library API):
  64-byte frames to destinations spread over the whole table;
- flows: 1, 64, 1024 interleaved flows (outer source ports) on one VNI.

The first three run again with the kernel's vxlan in a's place (kernel rows; ``--no-kernel``
skips them). Memory: vxlanpy's RSS (VmRSS) idle with 1 VNI (per VTEP), its growth per VNI, and
per 10^5 FDB entries. Frames are written to a's devices by an AF_PACKET sender
(scale_traffic.py) as fast as it can, for ``--seconds``; b's vxlan devices count what arrives
(rx_packets, rx_bytes) and drop it (addressed to no device of b). Every loop is bounded (sizes,
repetitions, seconds, timeouts). Results: scale.json, scale.md, scale.png in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.e2e import log, machine
from benchmarks.scale_traffic import fdb_mac, fmt, peer_mac, sink_mac, tap_mac
from benchmarks.scale_vtep import BASE_VNI, rss_kb
from vxlanpy.control import request
from vxlanpy.netns import Host, NetnsError, Topology, have_netns

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
A_UL, B_UL = "198.18.0.1", "198.18.0.2"
FULL = {
    "vnis": (1, 16, 256),
    "remotes": (1, 8, 64),
    "fdb": (1000, 100_000, 1_000_000),
    "flows": (1, 64, 1024),
}
QUICK = {"vnis": (1, 4), "remotes": (1, 4), "fdb": (100, 1000), "flows": (1, 8)}
SWEEPS = ("vnis", "flood", "fdb", "flows")
TCP_STREAMS = 4
FDB_RING = 65536  # distinct destinations of the FDB sweep's traffic (at most the table's size)


def _batch(h: Host, lines: list[str], tool: str = "ip") -> None:
    """Many iproute2 commands in one ``ip -batch`` (256 devices in a second, not in 30), or
    ``bridge -batch``."""
    if not lines:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".ip", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    try:
        h.topo.run([tool, "-n", h.ns, "-batch", f.name], timeout=600)
    finally:
        os.unlink(f.name)


def kernel_vtep(h: Host, dev: str, vnis: int, dests: list[str], fdb: int) -> dict[str, Any]:
    """The reference in a's place: the kernel's vxlan, set up as scale_vtep.py sets up vxlanpy
    (a device ``vx<k>`` per VNI with its MAC and address, the remotes as flood list, the sink
    entry, ``fdb`` bulk entries on vx0 through one ``bridge -batch``); how long that took."""
    lines = []
    for k in range(vnis):
        lines.append(
            f"link add vx{k} address {fmt(tap_mac(k))} type vxlan id {BASE_VNI + k} "
            f"dstport 4789 local {A_UL} dev {dev}"
        )
        if k < 256:
            lines.append(f"addr add 198.19.{k}.1/24 dev vx{k}")
        lines.append(f"link set vx{k} up")
    _batch(h, lines)
    entries = [
        f"fdb append 00:00:00:00:00:00 dev vx{k} dst {ip} self permanent"
        for k in range(vnis)
        for ip in dests
    ]
    entries += [f"fdb add {fmt(sink_mac(k))} dev vx{k} dst {dests[0]} self" for k in range(vnis)]
    _batch(h, entries, tool="bridge")
    t0 = time.monotonic()
    _batch(
        h,
        [f"fdb add {fmt(fdb_mac(i))} dev vx0 dst {dests[0]} self permanent" for i in range(fdb)],
        tool="bridge",
    )
    return {"ready": True, "add_s": time.monotonic() - t0, "sync_s": 0.0, "fdb": fdb}


def _dev_counters(h: Host) -> dict[str, int]:
    """Packets the vxlan devices of ``h`` sent and dropped, added up."""
    out = json.loads(h.sh("ip", "-s", "-j", "link", "show", "type", "vxlan"))
    tx = [d["stats64"]["tx"] for d in out]
    return {
        "tx_packets": sum(int(t["packets"]) for t in tx),
        "floods": 0,
        "l2_misses": 0,
        "lost": sum(int(t["dropped"]) + int(t["errors"]) for t in tx),
        "tap_queue": 0,
    }


class Bench:
    """One topology: on a, vxlanpy (``impl``, or the kernel's vxlan) with ``vnis`` segments,
    ``remotes`` remotes each and ``fdb`` bulk entries; the kernel's vxlan on b (a device per
    VNI), every remote address on b."""

    def __init__(self, vnis: int = 1, remotes: int = 1, fdb: int = 0, impl: str = "vxlanpy"):
        t0 = time.monotonic()
        self.vnis, self.impl = vnis, impl
        self.topo = Topology()
        self.a, self.b = self.topo.add_host("a"), self.topo.add_host("b")
        self.proc: subprocess.Popen[bytes] | None = None
        self.errlog = tempfile.TemporaryFile()
        try:
            self._build(remotes, fdb)
        except BaseException:
            self.close()
            raise
        self.setup_s = time.monotonic() - t0

    def _build(self, remotes: int, fdb: int) -> None:
        a, b = self.a, self.b
        a.no_ipv6()
        b.no_ipv6()
        dev = self.topo.link(a, b, f"{A_UL}/24", f"{B_UL}/24")
        if remotes == 1:
            dests = [B_UL]
        else:  # more remotes: more addresses of b, routed by a through b's underlay address
            dests = [f"198.18.1.{i}" for i in range(1, remotes + 1)]
            _batch(b, [f"addr add {ip}/32 dev {dev}" for ip in dests])
            a.ip("route", "add", "198.18.1.0/24", "via", B_UL)
        lines = []
        for k in range(self.vnis):
            lines.append(
                f"link add vx{k} address {fmt(peer_mac(k))} type vxlan id {BASE_VNI + k} "
                f"dstport 4789 remote {A_UL} dev {dev}"
            )
            if k < 256:
                lines.append(f"addr add 198.19.{k}.2/24 dev vx{k}")
                lines.append(f"neigh replace 198.19.{k}.1 lladdr {fmt(tap_mac(k))} dev vx{k}")
            lines.append(f"link set vx{k} up")
        lines = [ln for ln in lines if not ln.startswith("neigh")] + [
            ln for ln in lines if ln.startswith("neigh")
        ]  # neighbours once the devices are up
        _batch(b, lines)
        if self.impl == "kernel":
            self.ready = kernel_vtep(a, dev, self.vnis, dests, fdb)
            self.rss_idle_kb = 0
            return
        self.control = f"/run/vxlanpy/scale-{self.topo.tag}.sock"
        argv = [sys.executable, "-m", "benchmarks.scale_vtep", "--local", A_UL]
        argv += ["--vnis", str(self.vnis), "--fdb", str(fdb), "--control", self.control]
        for ip in dests:
            argv += ["--remote", ip]
        self.proc = a.popen(argv, stdout=subprocess.PIPE, stderr=self.errlog, cwd=str(ROOT))
        self.ready = self._line(timeout=120 + fdb / 5000)
        if not self.ready.get("ready"):
            raise NetnsError(f"the VTEP did not start: {self.ready}")
        _batch(
            a,
            [
                f"neigh replace 198.19.{k}.2 lladdr {fmt(peer_mac(k))} dev vx{k}"
                for k in range(min(self.vnis, 256))
            ],
        )
        self.ready["rss_kb_idle"] = self.rss_idle_kb = self.rss_kb()

    def _line(self, timeout: float) -> dict[str, Any]:
        """The runner's next JSON line on stdout, within ``timeout`` seconds."""
        assert self.proc is not None and self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                return {"error": f"no answer in {timeout:.0f} s", "log": self._log()}
        line = self.proc.stdout.readline()
        if not line:
            return {"error": "exited", "log": self._log()}
        return dict(json.loads(line))

    def _log(self) -> str:
        self.errlog.seek(0)
        return self.errlog.read().decode(errors="replace")[-2000:]

    def close(self) -> dict[str, Any]:
        """Stop the VTEP (its final stats) and delete the namespaces."""
        final: dict[str, Any] = {}
        if self.proc is not None and self.proc.poll() is None:
            self.topo.stop(self.proc, timeout=30)
            try:
                final = self._line(timeout=1)
            except (ValueError, OSError):
                final = {}
        self.topo.close()
        self.errlog.close()
        return final

    # --- counters ---------------------------------------------------------------------------

    def rss_kb(self) -> int:
        return rss_kb(str(self.proc.pid)) if self.proc is not None else 0

    def cpu_s(self) -> float:
        if self.proc is None:
            return 0.0  # the kernel: the sender counts it
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peer_rx(self) -> tuple[int, int]:
        """Packets and bytes b's vxlan devices received (decapsulated), added up."""
        out = json.loads(self.b.sh("ip", "-s", "-j", "link", "show", "type", "vxlan"))
        rx = [d["stats64"]["rx"] for d in out]
        return sum(int(r["packets"]) for r in rx), sum(int(r["bytes"]) for r in rx)

    def vtep_counters(self) -> dict[str, int]:
        if self.impl == "kernel":
            return _dev_counters(self.a)
        st = request(self.control, {"cmd": "stats"}, timeout=30)
        out = {"tx_packets": 0, "floods": 0, "l2_misses": 0}
        for seg in st["segments"].values():
            for k in out:
                out[k] += int(seg[k])
        out["lost"] = int(st["losses"]["total"])
        out["tap_queue"] = int(st["losses"]["tap_queue"])
        return out

    # --- measurements -----------------------------------------------------------------------

    def send(
        self, dst: str, size: int, seconds: float, ring: int = 4096, flows: int = 1
    ) -> dict[str, float]:
        """Frames to every TAP for ``seconds``; what each counter saw, per second."""
        ifaces = ",".join(f"vx{k}" for k in range(self.vnis))
        argv = [sys.executable, "-m", "benchmarks.scale_traffic", "--ifaces", ifaces]
        argv += ["--dst", dst, "--size", str(size), "--seconds", str(seconds)]
        argv += ["--ring", str(ring), "--flows", str(flows)]
        p0, v0, c0 = self.peer_rx(), self.vtep_counters(), self.cpu_s()
        out = subprocess.run(
            ["ip", "netns", "exec", self.a.ns, *argv],
            capture_output=True,
            text=True,
            cwd=str(ROOT),
            timeout=seconds + 120,
        )
        if out.returncode != 0:
            raise NetnsError(f"sender failed: {out.stderr[-1500:]}")
        gen = json.loads(out.stdout)
        time.sleep(0.3)  # let the queues drain
        p1, v1, c1 = self.peer_rx(), self.vtep_counters(), self.cpu_s()
        secs = float(gen["seconds"])
        d = {k: v1[k] - v0[k] for k in v0}
        r: dict[str, float] = {"sent": gen["sent"], "seconds": secs}
        r |= {k: float(v) for k, v in d.items()}
        r["peer_rx"], r["peer_rx_bytes"] = p1[0] - p0[0], p1[1] - p0[1]
        r["cpu_s"] = c1 - c0 if self.impl == "vxlanpy" else float(gen["cpu_s"])
        if self.impl == "kernel" and dst in ("bcast", "unknown"):
            r["floods"] = r["sent"]  # the kernel floods every such frame, counting none
        r["peer_kpps"] = r["peer_rx"] / secs / 1e3
        r["peer_gbps"] = r["peer_rx_bytes"] * 8 / secs / 1e9
        r["cpu_us_per_copy"] = r["cpu_s"] * 1e6 / d["tx_packets"] if d["tx_packets"] else 0.0
        return r

    def tcp(self, seconds: float) -> float:
        """Gbit/s of TCP_STREAMS iperf3 streams a -> b at once, each to its own VNI (spread
        over the range; with fewer VNIs than streams, several on one). iperf3 takes whole
        seconds (at least 1)."""
        secs = str(max(1, round(seconds)))
        vnis = [i * min(self.vnis, 256) // TCP_STREAMS for i in range(TCP_STREAMS)]
        ports = [5201 + i for i in range(TCP_STREAMS)]
        servers = [
            self.b.popen(
                ["iperf3", "-s", "-1", "-B", f"198.19.{k}.2", "-p", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for k, port in zip(vnis, ports, strict=True)
        ]
        try:
            for _ in range(100):  # until every server listens (at most 10 s)
                ss = self.b.sh("ss", "-ltnH", check=False)
                if all(f":{p} " in ss for p in ports):
                    break
                time.sleep(0.1)
            clients = [
                self.a.popen(
                    ["iperf3", "-c", f"198.19.{k}.2", "-p", str(port), "-t", secs, "-J"],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
                for k, port in zip(vnis, ports, strict=True)
            ]
            total = 0.0
            for c in clients:
                out, _ = c.communicate(timeout=seconds + 60)
                data = json.loads(out or b"{}")
                if "error" in data or "end" not in data:
                    raise NetnsError(f"iperf3: {data.get('error', 'no result')}")
                total += float(data["end"]["sum_received"]["bits_per_second"]) / 1e9
            return total
        finally:
            for s in servers:
                self.topo.stop(s)


# --- the sweeps --------------------------------------------------------------------------------


def sweep_vnis(
    sizes: tuple[int, ...], reps: int, seconds: float, impl: str = "vxlanpy"
) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        log(f"{impl}, VNIs: {n} (setting up)")
        bench = Bench(vnis=n, impl=impl)
        row: dict[str, Any] = {"vnis": n, "setup_s": bench.setup_s, "reps": []}
        row["rss_kb_idle"] = bench.rss_idle_kb
        rows.append(row)
        try:
            for rep in range(reps):
                r: dict[str, Any] = {
                    "tcp_gbps": bench.tcp(seconds),
                    "udp64": bench.send("sink", 64, seconds),
                    "udp1400": bench.send("sink", 1400, seconds),
                }
                log(
                    f"  rep {rep + 1}: TCP {r['tcp_gbps']:.2f} Gbit/s, 64 B "
                    f"{r['udp64']['peer_kpps']:.0f} kpps, 1400 B {r['udp1400']['peer_gbps']:.2f}"
                    f" Gbit/s ({r['udp1400']['peer_kpps']:.0f} kpps)"
                )
                row["reps"].append(r)
            row["rss_kb_end"] = bench.rss_kb()
        finally:
            bench.close()
    return rows


def sweep_flood(
    sizes: tuple[int, ...], reps: int, seconds: float, impl: str = "vxlanpy"
) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        log(f"{impl}, flood remotes: {n}")
        bench = Bench(remotes=n, impl=impl)
        row: dict[str, Any] = {"remotes": n, "reps": []}
        rows.append(row)
        try:
            for rep in range(reps):
                r = {
                    "bcast": bench.send("bcast", 64, seconds),
                    "unknown": bench.send("unknown", 64, seconds),
                }
                for kind in ("bcast", "unknown"):
                    m = r[kind]
                    m["frames_kpps"] = m["floods"] / m["seconds"] / 1e3
                log(
                    f"  rep {rep + 1}: broadcast {r['bcast']['frames_kpps']:.1f} kframes/s -> "
                    f"{r['bcast']['peer_kpps']:.0f} kcopies/s; unknown unicast "
                    f"{r['unknown']['frames_kpps']:.1f} -> {r['unknown']['peer_kpps']:.0f}"
                )
                row["reps"].append(r)
        finally:
            bench.close()
    return rows


def sweep_fdb(
    sizes: tuple[int, ...], reps: int, seconds: float, impl: str = "vxlanpy"
) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        log(f"{impl}, FDB entries: {n} (installing)")
        bench = Bench(fdb=n, impl=impl)
        rd = bench.ready
        row: dict[str, Any] = {"entries": n, "reps": [], "setup_s": bench.setup_s}
        row |= {k: rd[k] for k in ("add_s", "sync_s")}
        row["rss_kb_start"], row["rss_kb_installed"] = (
            rd.get("rss_kb_start", 0),
            rd.get("rss_kb", 0),
        )
        rows.append(row)
        how = "in C" if impl == "vxlanpy" else "by bridge -batch"
        log(f"  added {how} in {rd['add_s'] + rd['sync_s']:.1f} s")
        try:
            for rep in range(reps):
                r = {"udp64": bench.send(f"fdb:{n}", 64, seconds, ring=min(n, FDB_RING))}
                log(f"  rep {rep + 1}: 64 B {r['udp64']['peer_kpps']:.0f} kpps")
                row["reps"].append(r)
            row["rss_kb_end"] = bench.rss_kb()
        finally:
            bench.close()
    return rows


def sweep_flows(sizes: tuple[int, ...], reps: int, seconds: float) -> list[dict[str, Any]]:
    """64-byte frames of ``n`` flows (UDP source ports) on one VNI: as many outer source
    ports, each sent from a socket of its own (io/udp.py keeps 256 of them)."""
    rows = []
    bench = Bench()
    try:
        for n in sizes:
            log(f"flows: {n}")
            row: dict[str, Any] = {"flows": n, "reps": []}
            for rep in range(reps):
                r = {"udp64": bench.send("sink", 64, seconds, flows=n, ring=max(4096, n))}
                log(f"  rep {rep + 1}: 64 B {r['udp64']['peer_kpps']:.0f} kpps")
                row["reps"].append(r)
            rows.append(row)
    finally:
        bench.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    from benchmarks.scale_report import markdown, plot, summarize

    ap = argparse.ArgumentParser(
        prog="python -m benchmarks scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 rep, 0.5 s")
    ap.add_argument("--sweeps", default=",".join(SWEEPS), help="comma-separated subset")
    ap.add_argument(
        "--no-kernel", action="store_true", help="no kernel-kernel reference rows (faster)"
    )
    ap.add_argument("--out", default=str(ROOT / "build" / "scale"), help="where results go")
    a = ap.parse_args(argv)
    if a.quick:
        a.reps, a.seconds = 1, 0.5
    if not have_netns():
        log("the scaling benchmark needs root, iproute2 and /dev/net/tun")
        return 1
    sizes = QUICK if a.quick else FULL
    sweeps = [s for s in a.sweeps.split(",") if s]
    if set(sweeps) - set(SWEEPS) or a.reps < 1 or not 0 < a.seconds <= 60:
        log(f"--sweeps takes {', '.join(SWEEPS)}; --reps >= 1; --seconds in (0, 60]")
        return 2
    args = argv if argv is not None else sys.argv[1:]
    command = "python -m benchmarks scale " + " ".join(shlex.quote(x) for x in args)
    t0 = time.monotonic()
    data: dict[str, Any] = {"command": command, "machine": machine(), "quick": a.quick}
    data |= {"reps": a.reps, "seconds": a.seconds}
    kernel: dict[str, Any] = {}
    for name, sweep, key in (
        ("vnis", sweep_vnis, "vnis"),
        ("flood", sweep_flood, "remotes"),
        ("fdb", sweep_fdb, "fdb"),
    ):
        if name in sweeps:
            data[name] = sweep(sizes[key], a.reps, a.seconds)
            if not a.no_kernel:
                kernel[name] = sweep(sizes[key], a.reps, a.seconds, "kernel")
    if kernel:
        data["kernel"] = kernel
    if "flows" in sweeps:
        data["flows"] = sweep_flows(sizes["flows"], a.reps, a.seconds)
    data["duration_s"] = time.monotonic() - t0
    data["summary"] = summarize(data)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(data, indent=2) + "\n")
    chart = "scale.png" if plot(data["summary"], out / "scale.png") else None
    md = markdown(data, chart)
    (out / "scale.md").write_text(md)
    print(md)
    log(f"done in {data['duration_s']:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
