"""The cost of zero outer UDP checksums (``--noudpcsum``): vxlanpy -> kernel with the default
(checksums, UDP GSO), with ``--noudpcsum`` (sendmmsg) and with ``--noudpcsum --tunnel-gso``,
interleaved reps in one run, on the e2e bench's pairs (benchmarks/e2e.py). Root.

    python -m benchmarks.csum_bench [--reps 3] [--seconds 3] [--kinds PAIR,...]

``--kinds vxlanpy-kernel,vxlanpy_nowatch-kernel`` compares with the peer watch off instead.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from benchmarks.e2e import Pair, log

KINDS = ("vxlanpy-kernel", "vxlanpy_nocsum-kernel", "vxlanpy_nocsumtg-kernel")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.csum_bench")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--kinds", default=",".join(KINDS), help="pairs of benchmarks/e2e.py")
    a = ap.parse_args(argv)
    kinds = tuple(k for k in a.kinds.split(",") if k)
    rows: dict[str, dict[str, list[float]]] = {k: {} for k in kinds}
    for rep in range(a.reps):
        for kind in kinds:
            log(f"[{rep + 1}/{a.reps}] {kind}")
            p = Pair(kind)
            try:
                r = rows[kind]
                r.setdefault("tcp1", []).append(p.tcp(1, a.seconds)[0])
                r.setdefault("cpu", []).append(p.tcp(1, a.seconds)[1] or 0.0)
                r.setdefault("tcp1_rev", []).append(p.tcp(1, a.seconds, reverse=True)[0])
                r.setdefault("udp64", []).append(p.udp64(a.seconds)[0])
            finally:
                p.close()
    print("| pair | TCP a->b Gbit/s | a's CPU % (TCP a->b) | TCP b->a Gbit/s | 64-byte UDP kpps |")
    print("|---|---|---|---|---|")
    for kind, r in rows.items():
        cells = [
            f"{statistics.median(v):.2f} ({min(v):.2f}..{max(v):.2f})"
            for v in (r["tcp1"], r["cpu"], r["tcp1_rev"], r["udp64"])
        ]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
