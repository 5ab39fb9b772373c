"""Micro-benchmarks of vxlanpy's per-frame costs, on both fast-path backends.

Usage::

    python benchmarks/micro.py            # full run (a minute or less)
    python benchmarks/micro.py --quick    # tiny iteration counts, 10^4 FDB entries (CI smoke)

Prints the machine and the exact command, then one row per case: nanoseconds per frame, best
and median of several repeats (each repeat runs the case enough times to last ~20 ms; the GC is
off while timing, as ``timeit`` does). Cases:

- VXLAN header packing, one frame at a time (``struct``, ``wire.encode_header``,
  ``wire.encapsulate``) and per batch of 64 (``encap_batch``: header + flow-hash source port);
- header parsing, one at a time (``wire.decode_header``, ``wire.decapsulate``) and per batch
  (``decap_batch``);
- the engine per frame: ``handle_frames`` with an FDB hit, a flood to 2 remotes, and
  ``handle_datagrams`` with learning on (64 MACs from 8 VTEPs, refreshed every pass);
- the FDB's memory per learned entry at 10^6 entries learned from 100 VTEP addresses
  (tracemalloc, and the process RSS delta), and the time per new entry.

The single-frame codecs are plain Python on either backend, so they are shown once (``-``).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shlex
import statistics
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable

from vxlanpy import kernels, wire
from vxlanpy.batch import FrameBatch
from vxlanpy.engine import Engine, SegmentConfig
from vxlanpy.fdb import Fdb, Remote

BATCH = 64
VNI = 4242
TARGET_S = 0.02  # each timed repeat lasts at least this long (full run)

# Row names: the CI smoke test looks for these.
ROW_STRUCT = "pack struct.pack_into"
ROW_ENCODE = "pack wire.encode_header"
ROW_ENCAP1 = "pack wire.encapsulate"
ROW_ENCAPB = "pack encap_batch x64"
ROW_DECODE = "parse wire.decode_header"
ROW_DECAP1 = "parse wire.decapsulate"
ROW_DECAPB = "parse decap_batch x64"
ROW_HIT = "engine handle_frames fdb-hit x64"
ROW_HIT1 = "engine handle_frame fdb-hit (single)"
ROW_FLOOD = "engine handle_frames flood x2 x64"
ROW_RX = "engine handle_datagrams learn x64"
ROW_LEARN = "fdb learn new entry"
ROW_MEM = "fdb bytes/entry (tracemalloc)"
ROW_RSS = "fdb bytes/entry (RSS delta)"
ROWS = (
    ROW_STRUCT,
    ROW_ENCODE,
    ROW_ENCAP1,
    ROW_ENCAPB,
    ROW_DECODE,
    ROW_DECAP1,
    ROW_DECAPB,
    ROW_HIT,
    ROW_HIT1,
    ROW_FLOOD,
    ROW_RX,
    ROW_LEARN,
    ROW_MEM,
    ROW_RSS,
)

MAC_A = bytes.fromhex("02000000000a")
MAC_B = bytes.fromhex("02000000000b")


# --- frames ------------------------------------------------------------------------------------


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_frame(dst: bytes, src: bytes, sport: int, payload_len: int = 64) -> bytes:
    """An Ethernet/IPv4/TCP frame 198.19.0.1:sport -> 198.19.0.2:443 (no scapy needed here)."""
    tcp = struct.pack("!HHIIBBHHH", sport, 443, 1, 0, 5 << 4, 0x18, 65535, 0, 0)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(tcp) + payload_len,
        1,
        0x4000,
        64,
        6,
        0,
        bytes((198, 19, 0, 1)),
        bytes((198, 19, 0, 2)),
    )
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return dst + src + b"\x08\x00" + ip + tcp + b"x" * payload_len


FRAME = tcp_frame(MAC_B, MAC_A, 40000)  # 118 bytes


def frame_batch(frames: list[bytes]) -> FrameBatch:
    batch = FrameBatch(len(frames), max_frame=2048)
    for f in frames:
        batch.append_frame(f, VNI)
    return batch


def tx_frames(dst: bytes) -> list[bytes]:
    return [tcp_frame(dst, MAC_A, 40000 + k) for k in range(BATCH)]  # 64 flows


# --- timing ------------------------------------------------------------------------------------


class Timer:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.repeats = 3 if quick else 7

    def measure(self, run: Callable[[int], None], frames_per_call: int) -> tuple[float, float]:
        """``run(loops)`` does the work ``loops`` times; return (best, median) ns per frame."""
        loops = 2 if self.quick else self._calibrate(run)
        times = []
        gc_was = gc.isenabled()
        gc.disable()
        try:
            run(1)  # warm up (views, caches, first-time learning)
            for _ in range(self.repeats):
                t0 = time.perf_counter_ns()
                run(loops)
                times.append(time.perf_counter_ns() - t0)
        finally:
            if gc_was:
                gc.enable()
        per = [t / (loops * frames_per_call) for t in times]
        return min(per), statistics.median(per)

    @staticmethod
    def _calibrate(run: Callable[[int], None]) -> int:
        loops = 1
        while True:
            t0 = time.perf_counter_ns()
            run(loops)
            if time.perf_counter_ns() - t0 >= TARGET_S * 1e9 or loops >= 1 << 24:
                return loops
            loops *= 2


# --- cases -------------------------------------------------------------------------------------


def single_cases() -> list[tuple[str, Callable[[int], None], int]]:
    hdr = struct.Struct("!II")
    buf = bytearray(64)
    payload = wire.encapsulate(FRAME, VNI)
    flags = wire.VXLAN_FLAG_I << 24

    def pack_struct(loops: int) -> None:
        pack_into, vni = hdr.pack_into, VNI << 8
        for _ in range(loops):
            pack_into(buf, 0, flags, vni)

    def encode(loops: int) -> None:
        f = wire.encode_header
        for _ in range(loops):
            f(VNI)

    def encap(loops: int) -> None:
        f = wire.encapsulate
        for _ in range(loops):
            f(FRAME, VNI)

    def decode(loops: int) -> None:
        f = wire.decode_header
        for _ in range(loops):
            f(payload)

    def decap(loops: int) -> None:
        f = wire.decapsulate
        for _ in range(loops):
            f(payload)

    return [
        (ROW_STRUCT, pack_struct, 1),
        (ROW_ENCODE, encode, 1),
        (ROW_ENCAP1, encap, 1),
        (ROW_DECODE, decode, 1),
        (ROW_DECAP1, decap, 1),
    ]


def batch_cases(backend: kernels.Backend) -> list[tuple[str, Callable[[int], None], int]]:
    lo, hi = wire.DEFAULT_SRCPORT_RANGE
    tx = frame_batch(tx_frames(MAC_B))
    rx = FrameBatch(BATCH, max_frame=2048)
    for f in tx_frames(MAC_B):
        rx.append_payload(wire.encapsulate(f, VNI))

    def encap(loops: int) -> None:
        f = backend.encap_batch
        for _ in range(loops):
            f(tx, lo, hi)

    def decap(loops: int) -> None:
        f = backend.decap_batch
        for _ in range(loops):
            f(rx, False)

    return [(ROW_ENCAPB, encap, BATCH), (ROW_DECAPB, decap, BATCH)]


def engine_cases(name: str) -> list[tuple[str, Callable[[int], None], int]]:
    remotes = ("198.18.0.2", "198.18.0.3")

    def engine() -> Engine:
        e = Engine(backend=name)
        seg = e.add_segment(SegmentConfig(VNI, remotes=remotes))
        seg.fdb.add(MAC_B, Remote.make(remotes[0]))
        return e

    hit_engine, hit = engine(), frame_batch(tx_frames(MAC_B))
    flood_engine, flood = engine(), frame_batch(tx_frames(wire.BROADCAST_MAC))
    rx_engine = engine()
    rx = FrameBatch(BATCH, max_frame=2048)
    for k in range(BATCH):
        src = bytes.fromhex("021000000000")[:5] + bytes((k,))
        rx.append_payload(wire.encapsulate(tcp_frame(MAC_B, src, 40000 + k), VNI))
    sources = [f"198.18.1.{k % 8 + 1}" for k in range(BATCH)]

    def tx_hit(loops: int) -> None:
        e = hit_engine
        for _ in range(loops):
            e.handle_frames(VNI, hit, 1.0)
            e.datagrams_to_send()

    def tx_flood(loops: int) -> None:
        e = flood_engine
        for _ in range(loops):
            e.handle_frames(VNI, flood, 1.0)
            e.datagrams_to_send()

    def rx_learn(loops: int) -> None:
        e = rx_engine
        for _ in range(loops):
            e.handle_datagrams(rx, sources, 1.0)
            e.frames_to_device()

    return [(ROW_HIT, tx_hit, BATCH), (ROW_FLOOD, tx_flood, BATCH), (ROW_RX, rx_learn, BATCH)]


def single_engine_case() -> tuple[str, Callable[[int], None], int]:
    e = Engine()
    seg = e.add_segment(SegmentConfig(VNI, remotes=("198.18.0.2",)))
    seg.fdb.add(MAC_B, Remote.make("198.18.0.2"))

    def tx_one(loops: int) -> None:
        for _ in range(loops):
            e.handle_frame(VNI, FRAME, 1.0)
            e.datagrams_to_send()

    return (ROW_HIT1, tx_one, 1)


# --- FDB memory --------------------------------------------------------------------------------


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _learn_all(fdb: Fdb, n: int, ips: list[str]) -> None:
    base = 0x02_00_00_00_00_00
    step = 100.0 / n  # spread over 100 s, so the ageing wheel has ~100 buckets in use
    nips = len(ips)
    learn = fdb.learn
    for i in range(n):
        learn((base + i).to_bytes(6, "big"), ips[i % nips], i * step)


def fdb_memory(n: int) -> tuple[float, float | None, float]:
    """(tracemalloc bytes/entry, RSS bytes/entry or None, ns per new entry)."""
    ips = [f"198.18.{k // 256}.{k % 256 + 1}" for k in range(100)]

    # pass 1: RSS delta and speed, no tracing
    gc.collect()
    rss0 = _rss()
    fdb = Fdb(ageing=300.0, max_learned=0, learn_rate=0)  # no limits: n entries
    t0 = time.perf_counter_ns()
    _learn_all(fdb, n, ips)
    ns = (time.perf_counter_ns() - t0) / n
    rss1 = _rss()
    assert fdb.learned_count == n
    rss = (rss1 - rss0) / n if rss0 is not None and rss1 is not None else None
    del fdb
    gc.collect()

    # pass 2: every Python allocation the learning made and kept
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    fdb = Fdb(ageing=300.0, max_learned=0, learn_rate=0)  # no limits: n entries
    _learn_all(fdb, n, ips)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert fdb.learned_count == n
    return (after - before) / n, rss, ns


# --- main --------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _fmt_row(name: str, backend: str, a: str, b: str) -> str:
    return f"{name:<38} {backend:<8} {a:>12} {b:>12}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="tiny counts, 10^4 FDB entries (CI)")
    args = ap.parse_args(argv)
    timer = Timer(args.quick)
    n_fdb = 10**4 if args.quick else 10**6

    names: list[str] = []
    backends: dict[str, kernels.Backend] = {}
    for name in ("cffi", "python"):
        try:
            backends[name] = kernels.load(name)
            names.append(name)
        except ImportError:
            pass

    note = " (--quick: a smoke run, the numbers mean nothing)" if args.quick else ""
    print("vxlanpy micro-benchmarks" + note)
    print(f"command:  {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"machine:  {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{_cpu_model()}"
    )
    print(f"python:   {platform.python_implementation()} {platform.python_version()}")
    print(f"backends: {', '.join(names)}" + ("" if "cffi" in names else " (cffi not built)"))
    print(
        f"timing:   best / median of {timer.repeats} repeats, ns per frame; "
        f"frame = {len(FRAME)}-byte Ethernet/IPv4/TCP, batch = {BATCH}"
    )
    print()
    print(_fmt_row("case", "backend", "best ns", "median ns"))
    print("-" * 73)

    def show(name: str, backend: str, run: Callable[[int], None], per: int) -> None:
        best, med = timer.measure(run, per)
        print(_fmt_row(name, backend, f"{best:,.1f}", f"{med:,.1f}"), flush=True)

    for row, run, per in single_cases():
        show(row, "-", run, per)
    for name in names:
        for row, run, per in batch_cases(backends[name]):
            show(row, name, run, per)
    for name in names:
        for row, run, per in engine_cases(name):
            show(row, name, run, per)
    row, run, per = single_engine_case()
    show(row, "-", run, per)

    traced, rss, ns = fdb_memory(n_fdb)
    print()
    print(f"FDB at {n_fdb:,} learned entries from 100 VTEPs (aim: < 200 bytes/entry):")
    print(_fmt_row(ROW_LEARN, "-", f"{ns:,.1f} ns", ""))
    print(_fmt_row(ROW_MEM, "-", f"{traced:,.1f} B", ""))
    print(_fmt_row(ROW_RSS, "-", f"{rss:,.1f} B" if rss is not None else "n/a", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
