"""``vxlanpy-tunnel top``: a running VTEP's rates, refreshed in place.

Reads ``stats`` over the control socket every ``--interval`` seconds and shows what changed
since the last reading, per second: per VNI (packets and bits each way, drops, the share the C
fast path handled, the FDB's size), per remote VTEP, drops by reason, losses. On a terminal the
screen is redrawn in place (ANSI home and clear); otherwise each refresh is a block of plain
lines, and ``--json`` gives one object per refresh, on one line (see docs/reference.md#top).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..control import find_socket, request
from .client import client_parser
from .common import UsageError

__all__ = ["register", "rates", "render"]

_CLEAR = "\x1b[H\x1b[2J"


def register(sub: Any) -> None:
    t = client_parser(sub, "top", "live rates of a running VTEP: per VNI, per peer, drops", main)
    t.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    t.add_argument("--count", type=int, help="stop after this many refreshes")


def _per_s(new: int, old: int, dt: float) -> float:
    return round(max(0, new - old) / dt, 1)


def _drops(st: dict[str, Any]) -> dict[str, int]:
    """Drops by reason, over the segments and before a VNI was known."""
    out: dict[str, int] = {}
    for part in (*st["segments"].values(), st["unattributed"]):
        for reason, n in part["drops"].items():
            out[reason] = out.get(reason, 0) + n
    return out


def rates(old: dict[str, Any], new: dict[str, Any], dt: float) -> dict[str, Any]:
    """What changed from the ``stats`` answer ``old`` to ``new``, ``dt`` seconds later."""
    segments = {}
    for vni, c in new["segments"].items():
        o = old["segments"].get(vni, c)
        fast = new.get("fast_path_packets", {}).get(vni)
        ofast = old.get("fast_path_packets", {}).get(vni, fast)
        moved = sum(c[f"{w}_packets"] - o[f"{w}_packets"] for w in ("rx", "tx"))
        share = None
        if fast is not None and ofast is not None and moved > 0:
            share = round(sum(fast[w] - ofast[w] for w in ("rx", "tx")) / moved, 3)
        segments[vni] = {
            "rx_packets_s": _per_s(c["rx_packets"], o["rx_packets"], dt),
            "rx_bits_s": _per_s(8 * c["rx_bytes"], 8 * o["rx_bytes"], dt),
            "tx_packets_s": _per_s(c["tx_packets"], o["tx_packets"], dt),
            "tx_bits_s": _per_s(8 * c["tx_bytes"], 8 * o["tx_bytes"], dt),
            "drops_s": _per_s(c["dropped"], o["dropped"], dt),
            "fast_path_share": share,
            "fdb": new.get("tables", {}).get(vni, {}).get("fdb"),
        }
    peers = {}
    for ip, c in new.get("peers", {}).items():
        o = old.get("peers", {}).get(ip, dict.fromkeys(c, 0))
        peers[ip] = {
            f"{w}_{unit}_s": _per_s(m * c[f"{w}_{k}"], m * o[f"{w}_{k}"], dt)
            for w in ("rx", "tx")
            for unit, k, m in (("packets", "packets", 1), ("bits", "bytes", 8))
        }
    totals = [_drops(old), _drops(new)]
    drops = {
        reason: {"total": n, "per_s": _per_s(n, totals[0].get(reason, 0), dt)}
        for reason, n in totals[1].items()
    }
    lost_new, lost_old = new.get("losses", {}), old.get("losses", {})
    return {
        "interval": round(dt, 3),
        "segments": segments,
        "peers": peers,
        "drops": drops,
        "losses_s": _per_s(lost_new.get("total", 0), lost_old.get("total", 0), dt),
    }


def _si(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.1f}{unit}"
    return f"{v:.0f}"


def render(r: dict[str, Any]) -> str:
    """The rates of :func:`rates` as a few aligned lines."""
    head = f"{'':<16}{'rx pkt/s':>10}{'rx bit/s':>10}{'tx pkt/s':>10}{'tx bit/s':>10}"
    lines = [f"vxlanpy-tunnel top: every {r['interval']:g} s", "", f"{'VNI':<16}{head[16:]}"]
    lines[-1] += f"{'drop/s':>8}{'fdb':>7}{'C share':>9}"
    for vni, s in r["segments"].items():
        share = "-" if s["fast_path_share"] is None else f"{100 * s['fast_path_share']:.0f}%"
        lines.append(
            f"{vni:<16}{_si(s['rx_packets_s']):>10}{_si(s['rx_bits_s']):>10}"
            f"{_si(s['tx_packets_s']):>10}{_si(s['tx_bits_s']):>10}{_si(s['drops_s']):>8}"
            f"{s['fdb'] if s['fdb'] is not None else '-':>7}{share:>9}"
        )
    lines += ["", f"{'PEER':<16}{head[16:]}"]
    for ip, p in r["peers"].items():
        lines.append(
            f"{ip:<16}{_si(p['rx_packets_s']):>10}{_si(p['rx_bits_s']):>10}"
            f"{_si(p['tx_packets_s']):>10}{_si(p['tx_bits_s']):>10}"
        )
    lines += ["", "DROPS" + ("" if r["drops"] else ": none")]
    for reason, d in sorted(r["drops"].items(), key=lambda kv: -kv[1]["total"]):
        lines.append(f"  {reason:<22}{d['total']:>10}{_si(d['per_s']):>8}/s")
    if r["losses_s"]:
        lines.append(f"LOST: {_si(r['losses_s'])}/s")
    return "\n".join(lines)


def main(a: argparse.Namespace) -> int:
    if not a.interval > 0:
        raise UsageError(f"--interval must be a positive number of seconds, got {a.interval:g}")
    if a.count is not None and a.count < 1:
        raise UsageError(f"--count must be at least 1, got {a.count}")
    path = find_socket(a.control)
    tty = sys.stdout.isatty() and not a.json
    old, t_old = request(path, {"cmd": "stats"}), time.monotonic()
    n = 0
    while a.count is None or n < a.count:
        time.sleep(a.interval)
        new, t_new = request(path, {"cmd": "stats"}), time.monotonic()
        r = rates(old, new, max(t_new - t_old, 1e-6))
        if a.json:
            print(json.dumps(r), flush=True)
        else:
            print((_CLEAR if tty else "" if n == 0 else "\n") + render(r), flush=True)
        old, t_old = new, t_new
        n += 1
    return 0
