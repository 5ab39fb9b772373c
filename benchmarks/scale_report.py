"""The scaling benchmark's figures (benchmarks/scale.py): medians and spreads, the markdown
tables and the plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks.e2e import log

Stat = dict[str, float]


def stat(values: list[float]) -> Stat:
    """Median, min and max of the repetitions."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": float(len(values)),
    }


def _per_rep(reps: list[dict[str, Any]], kind: str, key: str) -> Stat:
    return stat([float(r[kind][key]) for r in reps])


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """Medians and spreads of every sweep, vxlanpy's and (under ``kernel``) the reference's,
    and vxlanpy's memory figures."""
    out = _sweeps(data)
    if "kernel" in data:
        out["kernel"] = _sweeps(data["kernel"])
    out["memory"] = memory(out)
    return out


def _sweeps(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "vnis" in data:
        out["vnis"] = [
            {
                "vnis": row["vnis"],
                "tcp_gbps": stat([r["tcp_gbps"] for r in row["reps"]]),
                "udp64_kpps": _per_rep(row["reps"], "udp64", "peer_kpps"),
                "udp64_us": _per_rep(row["reps"], "udp64", "cpu_us_per_copy"),
                "udp1400_gbps": _per_rep(row["reps"], "udp1400", "peer_gbps"),
                "udp1400_kpps": _per_rep(row["reps"], "udp1400", "peer_kpps"),
                "rss_kb_idle": row["rss_kb_idle"],
                "rss_kb_end": row["rss_kb_end"],
            }
            for row in data["vnis"]
        ]
    if "flood" in data:
        rows = []
        for row in data["flood"]:
            s: dict[str, Any] = {"remotes": row["remotes"]}
            for kind in ("bcast", "unknown"):
                s[f"{kind}_frames_kpps"] = _per_rep(row["reps"], kind, "frames_kpps")
                s[f"{kind}_copies_kpps"] = _per_rep(row["reps"], kind, "peer_kpps")
                s[f"{kind}_us_per_copy"] = _per_rep(row["reps"], kind, "cpu_us_per_copy")
            rows.append(s)
        out["flood"] = rows
    if "fdb" in data:
        out["fdb"] = [
            {
                "entries": row["entries"],
                "udp64_kpps": _per_rep(row["reps"], "udp64", "peer_kpps"),
                "udp64_us": _per_rep(row["reps"], "udp64", "cpu_us_per_copy"),
                "add_s": row["add_s"],
                "sync_s": row["sync_s"],
                "rss_kb_installed": row["rss_kb_installed"],
                "c_table_kb": c_table_kb(row["entries"]),
                "rss_kb_per_1e5": (row["rss_kb_installed"] - row["rss_kb_start"])
                * 1e5
                / row["entries"],
            }
            for row in data["fdb"]
        ]
    if "flows" in data:
        out["flows"] = [
            {
                "flows": row["flows"],
                "udp64_kpps": _per_rep(row["reps"], "udp64", "peer_kpps"),
                "udp64_us": _per_rep(row["reps"], "udp64", "cpu_us_per_copy"),
            }
            for row in data["flows"]
        ]
    return out


def c_table_kb(entries: int) -> float:
    """The C flow table's size for ``entries`` (csrc/table.c: 1024 slots at first, then the
    smallest power of two at least twice the entries, once they fill three quarters of it;
    24 bytes a slot)."""
    cap = 1024
    if entries * 4 > cap * 3:
        cap = 16
        while cap < entries * 2:
            cap <<= 1
    return cap * 24 / 1024


def memory(s: dict[str, Any]) -> dict[str, float]:
    """RSS per VTEP (idle, 1 VNI), per VNI (the slope from the fewest to the most VNIs), per
    10^5 FDB entries (at the largest table) and that table's whole RSS, in KiB."""
    m: dict[str, float] = {}
    v = s.get("vnis") or []
    if v:
        m["vtep_kb"] = float(v[0]["rss_kb_idle"])
    if len(v) > 1 and v[-1]["vnis"] > v[0]["vnis"]:
        grow = v[-1]["rss_kb_idle"] - v[0]["rss_kb_idle"]
        m["per_vni_kb"] = grow / (v[-1]["vnis"] - v[0]["vnis"])
    f = s.get("fdb") or []
    if f:
        m["fdb_entries"] = float(f[-1]["entries"])
        m["fdb_per_1e5_kb"] = float(f[-1]["rss_kb_per_1e5"])
        m["fdb_rss_kb"] = float(f[-1]["rss_kb_installed"])
    return m


def _cell(s: Stat, digits: int = 0) -> str:
    f = f"{{:.{digits}f}}"
    return f"{f.format(s['median'])} ({f.format(s['min'])}..{f.format(s['max'])})"


def _mib(kb: float) -> str:
    return f"{kb / 1024:.1f}"


NOTES = """Host a runs vxlanpy (`benchmarks/scale_vtep.py`: the `Vtep` and control socket of
`vxlanpy-tunnel run`, with its defaults), host b the kernel's vxlan, in two namespaces joined by
a veth pair. An AF_PACKET sender (`benchmarks/scale_traffic.py`, 64 frames per `sendmmsg`)
writes IPv4/UDP frames of one flow to a's TAPs as fast as it can; b's vxlan devices count what
arrives (rx_packets; rx_bytes, the inner IP packets) and drop it, since the frames are addressed
to no device of b. So the rates are what vxlanpy forwards with one core while the sender and b's
receive use the rest (what the TAPs could not queue is counted in vxlanpy's `losses.tap_queue`);
b's receive runs in vxlanpy's sends (veth), so "CPU per frame" (vxlanpy's user + system time
over the frames or copies it sent) includes it. VNIs: the frames go round-robin over every VNI
(a TAP and a kernel device each); TCP: 4 iperf3 streams at once, each to its own VNI spread over
the range (with fewer VNIs, several on one). Flooding: the remotes are addresses of b's underlay
device, all received by one vxlan device; broadcast frames are flooded in C, unknown unicast
goes up to the engine (an L2 miss) and is flooded from there; copies = frames × remotes in
vxlanpy's counters. FDB: static entries installed through the library API (`Fdb.add`, then
`Engine.sync_datapath` into the C table; no `max_addresses` limit, and `max_learned` does not
apply to static entries); the frames go to 65,536 distinct entries spread over the table (all of
them when smaller); "C table" is the flow table's size by `csrc/table.c`'s rule (a power of two
at least twice the entries, 24 bytes a slot). Flows: frames of N UDP source ports interleaved
one by one on one VNI, hence N outer source ports, each sent from a socket bound to it
(`io/udp.py` keeps 256 such sockets, least recently used closed). Kernel rows: the kernel's
vxlan in a's place, set up alike (a device per VNI, the flood list as all-zeros FDB entries, the
bulk entries through one `bridge -batch`: "added"); the same sender writes to its devices, so
the kernel's whole transmit path, and most of b's receive, runs in the sender's system calls on
one core, and its CPU per frame is the sender's. Memory: VmRSS of the vxlanpy process. Each
figure: median (min..max) of the repetitions, within one topology per size."""


def _ratio(s: Stat, ref: Stat | None) -> str:
    return f" ×{s['median'] / ref['median']:.2f}" if ref and ref["median"] else ""


def _rows(s: dict[str, Any], sweep: str, key: str) -> list[tuple[str, dict[str, Any], Any]]:
    """(VTEP, row, the kernel's row of the same size or None) for the table of ``sweep``:
    vxlanpy's row, then the kernel's."""
    ref = {r[key]: r for r in s.get("kernel", {}).get(sweep, [])}
    out: list[tuple[str, dict[str, Any], Any]] = []
    for r in s[sweep]:
        out.append(("vxlanpy", r, ref.get(r[key])))
        if r[key] in ref:
            out.append(("kernel", ref[r[key]], None))
    return out


def _table_vnis(s: dict[str, Any]) -> list[str]:
    lines = [
        "| VNIs | VTEP | TCP, 4 streams [Gbit/s] | 64-byte UDP [kpps] | CPU per 64-byte frame"
        " [µs] | 1400-byte UDP [Gbit/s] | RSS idle [MiB] |",
        "|---|---|---|---|---|---|---|",
    ]
    for who, r, k in _rows(s, "vnis", "vnis"):
        rss = _mib(r["rss_kb_idle"]) if who == "vxlanpy" else "—"
        lines.append(
            f"| {r['vnis']} | {who} | {_cell(r['tcp_gbps'], 2)}"
            f"{_ratio(r['tcp_gbps'], k and k['tcp_gbps'])} | {_cell(r['udp64_kpps'])}"
            f"{_ratio(r['udp64_kpps'], k and k['udp64_kpps'])} | {_cell(r['udp64_us'], 2)} | "
            f"{_cell(r['udp1400_gbps'], 2)}{_ratio(r['udp1400_gbps'], k and k['udp1400_gbps'])}"
            f" | {rss} |"
        )
    return lines


def _table_flood(s: dict[str, Any]) -> list[str]:
    lines = [
        "| remotes | VTEP | broadcast frames [kpps] | copies [kpps] | CPU per copy [µs] | "
        "unknown unicast frames [kpps] | copies [kpps] | CPU per copy [µs] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for who, r, k in _rows(s, "flood", "remotes"):
        cells = [str(r["remotes"]), who]
        for kind in ("bcast", "unknown"):
            copies = r[f"{kind}_copies_kpps"]
            cells += [
                _cell(r[f"{kind}_frames_kpps"], 1),
                _cell(copies) + _ratio(copies, k and k[f"{kind}_copies_kpps"]),
                _cell(r[f"{kind}_us_per_copy"], 2),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _table_fdb(s: dict[str, Any]) -> list[str]:
    lines = [
        "| FDB entries | VTEP | added [s] | installed in C [s] | 64-byte UDP [kpps] | "
        "CPU per frame [µs] | RSS [MiB] | RSS per 10^5 entries [MiB] | C table [MiB] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for who, r, k in _rows(s, "fdb", "entries"):
        if who == "vxlanpy":
            mem = f"{_mib(r['rss_kb_installed'])} | {_mib(r['rss_kb_per_1e5'])} | "
            mem += f"{r['c_table_kb'] / 1024:.2f}"
            sync = f"{r['sync_s']:.2f}"
        else:
            mem, sync = "— | — | —", "—"
        lines.append(
            f"| {r['entries']:,} | {who} | {r['add_s']:.2f} | {sync} | {_cell(r['udp64_kpps'])}"
            f"{_ratio(r['udp64_kpps'], k and k['udp64_kpps'])} | {_cell(r['udp64_us'], 2)} | "
            f"{mem} |"
        )
    return lines


def markdown(data: dict[str, Any], chart: str | None) -> str:
    s, mach = data["summary"], data["machine"]
    lines = [
        "## Scaling",
        "",
        f"Command: `{data['command']}` ({data['duration_s']:.0f} s)  ",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, Linux {mach['kernel']}, "
        f"Python {mach['python']}, vxlanpy backend `{mach['backend']}`  ",
        f"Run: {mach['date']}; {data['reps']} repetition(s), {data['seconds']:g} s per "
        "measurement. Cells: median (min..max), ×ratio to the kernel's vxlan in a's place "
        "(kernel rows) at the same size.",
    ]
    for sweep, table in (("vnis", _table_vnis), ("flood", _table_flood), ("fdb", _table_fdb)):
        if sweep in s:
            lines += ["", *table(s)]
    if "flows" in s:
        lines += [
            "",
            "| flows (outer source ports) | 64-byte UDP [kpps] | CPU per frame [µs] |",
            "|---|---|---|",
        ]
        for r in s["flows"]:
            lines.append(f"| {r['flows']} | {_cell(r['udp64_kpps'])} | {_cell(r['udp64_us'], 2)} |")
    m = s["memory"]
    mem = []
    if "vtep_kb" in m:
        mem.append(f"per VTEP {_mib(m['vtep_kb'])} MiB (1 VNI, idle)")
    if "per_vni_kb" in m:
        mem.append(f"per VNI {m['per_vni_kb']:.0f} KiB")
    if "fdb_per_1e5_kb" in m:
        mem.append(
            f"per 10^5 FDB entries {_mib(m['fdb_per_1e5_kb'])} MiB "
            f"({int(m['fdb_entries']):,} entries: {_mib(m['fdb_rss_kb'])} MiB in all)"
        )
    if mem:
        lines += ["", "Memory of vxlanpy (VmRSS): " + "; ".join(mem) + "."]
    if chart:
        lines += ["", f"![packet rate, flooding and memory as the work grows]({chart})"]
    lines += ["", NOTES]
    return "\n".join(lines) + "\n"


def _errorbar(
    ax: Any, xs: list[float], stats: list[Stat], label: str, fmt: str, color: str
) -> None:
    med = [st["median"] for st in stats]
    lo = [st["median"] - st["min"] for st in stats]
    hi = [st["max"] - st["median"] for st in stats]
    ax.errorbar(xs, med, yerr=[lo, hi], fmt=fmt, capsize=3, label=label, color=color)


def _log_x(ax: Any, xs: list[int]) -> None:
    """A log x axis ticked at the sizes measured, written out."""
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:,}" for x in xs])
    ax.minorticks_off()


def plot(s: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        log("matplotlib is not installed: no chart")
        return False
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    (p_vni, p_flood, p_copy), (p_fdb, p_flows, p_mem) = axes
    if "vnis" in s:
        rows, xs = s["vnis"], [r["vnis"] for r in s["vnis"]]
        _errorbar(p_vni, xs, [r["udp64_kpps"] for r in rows], "64-byte UDP [kpps]", "o-", "C0")
        _errorbar(p_vni, xs, [r["udp1400_kpps"] for r in rows], "1400-byte UDP [kpps]", "s-", "C1")
        kr = s.get("kernel", {}).get("vnis")
        if kr:
            stats = [r["udp64_kpps"] for r in kr]
            _errorbar(p_vni, [r["vnis"] for r in kr], stats, "kernel: 64-byte UDP", "o:", "C7")
        ax2 = p_vni.twinx()
        _errorbar(ax2, xs, [r["tcp_gbps"] for r in rows], "TCP 4 streams [Gbit/s]", "^--", "C2")
        ax2.set_ylabel("Gbit/s")
        ax2.set_ylim(bottom=0)
        _log_x(p_vni, xs)
        p_vni.set(ylim=(0, None), xlabel="VNIs on one VTEP", ylabel="kpps at the peer")
        p_vni.set_title("VNIs (traffic over all of them)")
        h1, l1 = p_vni.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        p_vni.legend(h1 + h2, l1 + l2, fontsize=8)
    if "flood" in s:
        rows, xs = s["flood"], [r["remotes"] for r in s["flood"]]
        for i, (kind, name) in enumerate((("bcast", "broadcast"), ("unknown", "unknown unicast"))):
            c = f"C{3 + i}"
            stats = [r[f"{kind}_copies_kpps"] for r in rows]
            _errorbar(p_flood, xs, stats, f"{name}: copies", "o-", c)
            stats = [r[f"{kind}_frames_kpps"] for r in rows]
            _errorbar(p_flood, xs, stats, f"{name}: frames", "s--", c)
            stats = [r[f"{kind}_us_per_copy"] for r in rows]
            _errorbar(p_copy, xs, stats, name, "o-", c)
        kr = s.get("kernel", {}).get("flood")
        if kr:
            kx = [r["remotes"] for r in kr]
            stats = [r["bcast_copies_kpps"] for r in kr]
            _errorbar(p_flood, kx, stats, "kernel: broadcast copies", "o:", "C7")
            stats = [r["bcast_us_per_copy"] for r in kr]
            _errorbar(p_copy, kx, stats, "kernel: broadcast (sender's CPU)", "o:", "C7")
        for ax in (p_flood, p_copy):
            _log_x(ax, xs)
            ax.set_xlabel("remotes on the flood list")
            ax.legend(fontsize=8)
        p_flood.set_yscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:g}")
        p_flood.yaxis.set_major_formatter(plain)
        p_flood.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        p_flood.set(ylabel="kpps", title="Flooding (head-end replication)")
        p_copy.set(ylim=(0, None), ylabel="µs of CPU", title="Cost per copy")
    if "fdb" in s:
        rows, xs = s["fdb"], [r["entries"] for r in s["fdb"]]
        _errorbar(p_fdb, xs, [r["udp64_kpps"] for r in rows], "64-byte UDP [kpps]", "o-", "C0")
        kr = s.get("kernel", {}).get("fdb")
        if kr:
            stats = [r["udp64_kpps"] for r in kr]
            _errorbar(p_fdb, [r["entries"] for r in kr], stats, "kernel: 64-byte UDP", "o:", "C7")
        _log_x(p_fdb, xs)
        p_fdb.set(ylim=(0, None), xlabel="static FDB entries", ylabel="kpps at the peer")
        p_fdb.set_title("FDB size under traffic")
        p_fdb.legend(fontsize=8)
    if "flows" in s:
        rows, xs = s["flows"], [r["flows"] for r in s["flows"]]
        _errorbar(p_flows, xs, [r["udp64_kpps"] for r in rows], "64-byte UDP [kpps]", "o-", "C0")
        _log_x(p_flows, xs)
        p_flows.set(ylim=(0, None), xlabel="flows (outer source ports), interleaved")
        p_flows.set(ylabel="kpps at the peer", title="Flows on one VNI")
        p_flows.legend(fontsize=8)
    if "vnis" in s:
        xs = [r["vnis"] for r in s["vnis"]]
        ys = [r["rss_kb_idle"] / 1024 for r in s["vnis"]]
        p_mem.plot(xs, ys, "o-", color="C0", label="RSS vs VNIs")
    if "fdb" in s:
        xs = [r["entries"] for r in s["fdb"]]
        ys = [r["rss_kb_installed"] / 1024 for r in s["fdb"]]
        p_mem.plot(xs, ys, "s-", color="C1", label="RSS vs FDB entries")
        ys = [r["c_table_kb"] / 1024 for r in s["fdb"]]
        p_mem.plot(xs, ys, "s:", color="C1", label="of which the C table")
    p_mem.set_xscale("log")
    p_mem.set(ylim=(0, None), xlabel="VNIs / FDB entries", ylabel="MiB")
    p_mem.set_title("vxlanpy's memory (VmRSS)")
    p_mem.legend(fontsize=8)
    fig.suptitle("vxlanpy as the work grows, against the kernel's vxlan (median, min..max)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
