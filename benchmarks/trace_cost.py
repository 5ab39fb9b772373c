"""The cost of tracing (vxlanpy/trace.py): the engine's throughput with no tracer, with a
tracer whose sink keeps nothing but matches everything, with a drop-only filter, and with a
capture to memory (capture.py), device -> wire (unicast hits, C fast path and engine) and wire
-> device (known sources). Bounded: ``--batches`` batches of 64 frames per run, ``--runs``
runs, the best reported.

    python -m benchmarks.trace_cost [--batches N] [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable

from vxlanpy import datapath as datapath_mod
from vxlanpy.batch import FrameBatch
from vxlanpy.capture import Capture
from vxlanpy.datapath import Datapath, set_source
from vxlanpy.engine import Engine, SegmentConfig
from vxlanpy.fdb import Remote
from vxlanpy.framedesc import build_frame
from vxlanpy.trace import TraceFilter, Tracer
from vxlanpy.wire import encode_header, parse_mac

VNI = 42
PEER = "198.18.0.2"
N = 64


def _engine(fast: bool) -> Engine:
    macs = [(parse_mac(f"02:00:00:00:01:{k:02x}"), Remote.make(PEER)) for k in range(N)]
    e = Engine()
    e.add_segment(SegmentConfig(vni=VNI, remotes=[PEER], fdb=macs, learning=False))
    if fast:
        e.attach_datapath(Datapath())
    return e


def _tx_batch() -> FrameBatch:
    b = FrameBatch(N, 1600)
    for k in range(N):
        w = f"dst 02:00:00:00:01:{k:02x} src 02:00:00:00:00:01 ip 198.19.0.1 198.19.0.{k} udp"
        b.append_frame(build_frame(w.split()), VNI)
    return b


def _rx_payloads() -> list[bytes]:
    out = []
    for k in range(N):
        w = f"dst 02:00:00:00:00:01 src 02:00:00:00:01:{k:02x} ip 198.19.0.{k} 198.19.0.1 udp"
        out.append(encode_header(VNI) + build_frame(w.split()))
    return out


def _tracer(kind: str) -> Tracer | None:
    if kind == "off":
        return None
    t = Tracer()
    if kind == "all":
        t.add(lambda r: None)
    elif kind == "drops":
        t.add(lambda r: None, TraceFilter(drops=True))
    else:
        t.add(Capture(io.BytesIO(), "198.18.0.1").record)
    return t


def _measure(step: Callable[[], None], batches: int, runs: int) -> float:
    """The fastest of ``runs`` runs of ``batches`` steps, ns per frame (the least disturbed by
    other load on the machine)."""
    per = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        for _ in range(batches):
            step()
        per.append((time.perf_counter_ns() - t0) / (batches * N))
    return min(per)


def bench(batches: int, runs: int) -> dict[str, dict[str, float]]:
    paths = ["engine"] + (["fast-path"] if datapath_mod.available() else [])
    out: dict[str, dict[str, float]] = {}
    for path in paths:
        fast = path == "fast-path"
        for kind in ("off", "all", "drops", "capture"):
            e = _engine(fast)
            e.tracer = _tracer(kind)
            tx = _tx_batch()

            def tx_step(e: Engine = e, tx: FrameBatch = tx, fast: bool = fast) -> None:
                if fast:
                    e.forward_frames(VNI, tx, 1.0)
                else:
                    e.handle_frames(VNI, tx, 1.0)
                e.datagrams_to_send()

            rx = FrameBatch(N, 1600)
            for i, p in enumerate(_rx_payloads()):  # decapsulation leaves the payloads as they are
                rx.append_payload(p)
                set_source(rx, i, PEER)

            def rx_step(e: Engine = e, rx: FrameBatch = rx, fast: bool = fast) -> None:
                if fast:
                    e.forward_datagrams(rx, 1.0)
                else:
                    e.handle_datagrams(rx, [PEER] * N, 1.0)
                e.frames_to_device()

            out.setdefault(f"tx {path}", {})[kind] = _measure(tx_step, batches, runs)
            out.setdefault(f"rx {path}", {})[kind] = _measure(rx_step, batches, runs)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    res = bench(a.batches, a.runs)
    if a.json:
        print(json.dumps(res, indent=2))
        return
    print("| path | off | on, sink keeps nothing | on, drops only | on, capture |")
    print("|---|---|---|---|---|")
    for name, r in res.items():
        print(
            f"| {name} | "
            + " | ".join(f"{r[k]:,.0f}" for k in ("off", "all", "drops", "capture"))
            + " |"
        )
    print(f"ns per frame, best of {a.runs} runs of {a.batches} batches of {N} frames")


if __name__ == "__main__":
    main()
