"""Where the bench's UDP packets are lost: every drop counter on the path a -> b, read before
and after a run, so that a UDP row says *where* its loss happened (issue 13, loss accounting).

The path of a 64-byte iperf3 datagram from a to b, and the counter of each place it can be lost:

- a's overlay device: the TAP's queue when vxlanpy reads too slowly, or the kernel vxlan
  device's own drops (``ip -s link``: tx_dropped, rx_dropped);
- a's vxlanpy: its ``losses`` (``stats --json``: the TAPs' queues, refused sends, cut
  failures, receive buffers, truncated, spill slots, TAP writes) and ``dropped`` (by a rule);
- a's and b's UDP stacks (``/proc/net/snmp``: SndbufErrors, RcvbufErrors, InErrors): b's
  RcvbufErrors holds both b's VTEP socket (vxlanpy) and iperf3's own server socket;
- the veth between them and b's overlay device (``ip -s link`` on b);
- b's vxlanpy, as a's.
The sum of these need not equal iperf3's lost count exactly (a datagram can be counted by two
layers, and iperf3 also counts reordering), but the place with the count is the place to look.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from typing import Protocol

__all__ = ["Counters", "snapshot", "delta", "median_where", "markdown_rows"]

Counters = dict[str, int]
_SNMP = ("SndbufErrors", "RcvbufErrors", "InErrors")


class _Host(Protocol):
    name: str

    def sh(self, *argv: str, check: bool = True, timeout: float = 60) -> str: ...


def _snmp(host: _Host) -> Counters:
    lines = [ln.split() for ln in host.sh("cat", "/proc/net/snmp").splitlines()]
    out: Counters = {}
    for names, values in zip(lines, lines[1:], strict=False):
        if names and names[0] == "Udp:" and values[0] == "Udp:" and not values[1].isalpha():
            row = dict(zip(names[1:], values[1:], strict=False))
            for k in _SNMP:
                if k in row:
                    out[f"{host.name}: udp {k}"] = int(row[k])
    return out


def _links(host: _Host) -> Counters:
    out: Counters = {}
    try:
        data = json.loads(host.sh("ip", "-s", "-j", "link", "show", check=False) or "[]")
    except json.JSONDecodeError:
        return out
    for link in data:
        name = link.get("ifname", "?")
        if name == "lo":
            continue
        stats = link.get("stats64") or link.get("stats") or {}
        for direction in ("rx", "tx"):
            d = stats.get(direction, {})
            for k in ("dropped", "errors"):
                if k in d:
                    out[f"{host.name}: {name} {direction}_{k}"] = int(d[k])
    return out


def _vxlanpy(host: _Host, control: str) -> Counters:
    out = host.sh(
        sys.executable,
        "-m",
        "vxlanpy.cli",
        "stats",
        "--json",
        "--control",
        control,
        check=False,
        timeout=10,
    )
    try:
        data = json.loads(out)
    except json.JSONDecodeError:
        return {}
    res: Counters = {}
    for k, v in (data.get("losses") or {}).items():
        if k != "total" and isinstance(v, int):
            res[f"{host.name}: vxlanpy lost {k}"] = v
    if isinstance(data.get("dropped"), int):
        res[f"{host.name}: vxlanpy dropped"] = data["dropped"]
    return res


def snapshot(hosts: Sequence[_Host], controls: Mapping[str, str]) -> Counters:
    """Every counter of ``hosts`` (``controls``: host name -> the control socket of the
    vxlanpy running there)."""
    out: Counters = {}
    for h in hosts:
        out |= _snmp(h)
        out |= _links(h)
        if h.name in controls:
            out |= _vxlanpy(h, controls[h.name])
    return out


def delta(before: Counters, after: Counters) -> Counters:
    """What grew between the two snapshots (counters that did not move are left out)."""
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v > before.get(k, 0)}


def median_where(runs: Sequence[Counters]) -> Counters:
    """Each counter's median over the runs (a run where it did not move counts 0)."""
    keys = sorted({k for r in runs for k in r})
    return {k: round(statistics.median(r.get(k, 0) for r in runs)) for k in keys}


def markdown_rows(where: Mapping[str, Sequence[Counters]]) -> list[str]:
    """A table: one row per counter that moved in any pair, one column per pair."""
    med = {pair: median_where(runs) for pair, runs in where.items() if runs}
    if not med:
        return []
    pairs = list(med)
    keys = sorted({k for m in med.values() for k in m})
    lines = ["| counter | " + " | ".join(pairs) + " |", "|---|" + "---|" * len(pairs)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(str(med[p].get(k, 0)) for p in pairs) + " |")
    return lines
