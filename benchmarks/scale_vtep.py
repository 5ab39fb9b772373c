"""The VTEP under test in the scaling benchmark (benchmarks/scale.py), run inside a namespace.

``python -m benchmarks.scale_vtep --local IP --vnis N --remote IP... [--fdb F] --control PATH``

What ``vxlanpy-tunnel run --config`` does (a :class:`vxlanpy.tunnel.Vtep` and its control
socket), with N segments (VNI ``BASE_VNI + k`` on TAP ``vx<k>`` with MAC ``tap_mac(k)``, address
198.19.k.1/24 for k < 256, the remotes as flood list, a static FDB entry for ``sink_mac(k)``
towards the first remote), and F static FDB entries (``fdb_mac(i)``, towards the first
remote) put into segment 0 through the library API (``Fdb.add``) and installed into the C
datapath (``Engine.sync_datapath``) before it says it is ready: one JSON line on stdout with
the time both took and the RSS before and after. It runs until SIGTERM, then prints its stats
(one JSON line on stdout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path

from benchmarks.scale_traffic import fdb_mac, fmt, sink_mac, tap_mac
from vxlanpy.config import SegmentSpec, VtepConfig
from vxlanpy.control import ControlServer
from vxlanpy.fdb import Remote
from vxlanpy.tunnel import Vtep, install_uvloop

BASE_VNI = 1000


def rss_kb(pid: str = "self") -> int:
    """VmRSS of a process, in KiB (/proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def config(local: str, vnis: int, remotes: list[str]) -> VtepConfig:
    segments = [
        SegmentSpec(
            vni=BASE_VNI + k,
            tap=f"vx{k}",
            mac=fmt(tap_mac(k)),
            address=f"198.19.{k}.1/24" if k < 256 else None,
            remotes=list(remotes),
            fdb=[(fmt(sink_mac(k)), remotes[0])],
        )
        for k in range(vnis)
    ]
    return VtepConfig(segments=segments, local=local)


def install(vtep: Vtep, entries: int, dst: str) -> tuple[float, float]:
    """``entries`` static entries in segment 0 (seconds to add, seconds to install in C)."""
    fdb = vtep.segment(BASE_VNI).fdb
    remote = Remote.make(dst)
    t0 = time.monotonic()
    for i in range(entries):
        fdb.add(fdb_mac(i), remote)
    t1 = time.monotonic()
    vtep.engine.sync_datapath()
    return t1 - t0, time.monotonic() - t1


async def serve(a: argparse.Namespace) -> int:
    vtep = Vtep(config(a.local, a.vnis, a.remote))
    await vtep.start()
    server = ControlServer(vtep, a.control)
    await server.start()
    rss0 = rss_kb()
    add_s, sync_s = install(vtep, a.fdb, a.remote[0])
    ready = {"ready": True, "rss_kb_start": rss0, "rss_kb": rss_kb(), "fdb": a.fdb}
    ready |= {"add_s": add_s, "sync_s": sync_s, "fast_path": vtep.pumps is not None}
    print(json.dumps(ready), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(vtep.wait_stopped())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    await server.close()
    await vtep.close()
    print(json.dumps({"stats": vtep.stats()}), flush=True)
    return 1 if vtep.failure is not None else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale_vtep")
    ap.add_argument("--local", required=True)
    ap.add_argument("--vnis", type=int, default=1)
    ap.add_argument("--remote", action="append", required=True, help="repeatable")
    ap.add_argument("--fdb", type=int, default=0, help="bulk static entries in segment 0")
    ap.add_argument("--control", required=True)
    a = ap.parse_args(argv)
    install_uvloop()
    return asyncio.run(serve(a))


if __name__ == "__main__":
    sys.exit(main())
