"""Micro-benchmarks with pytest-benchmark: codec, engine, FDB. ``python -m benchmarks micro``.

Rows: header pack/parse single (struct) and batch (both backends), engine cost per frame
(encapsulation with an FDB hit, flood to two remotes, decapsulation with learning), FDB lookup
and learn at 10^3, 10^5 and 10^6 entries with memory per entry (tracemalloc). Results go to
``docs/micro.json`` and ``docs/micro.md`` (``--out`` to change; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from vxlanpy import wire
from vxlanpy.batch import FrameBatch
from vxlanpy.engine import Engine, SegmentConfig
from vxlanpy.fdb import Fdb
from vxlanpy.kernels import load

HERE = Path(__file__).resolve().parent
BATCH = 64
BACKENDS = ["cffi", "python"]


def _frame(i: int = 0) -> bytes:
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    ip = bytes.fromhex("4500006400004000400600000a000001") + bytes([10, 0, 0, 2])
    tcp = (1000 + i % 50).to_bytes(2, "big") + b"\x00\x50" + bytes(16)
    return eth + ip + tcp + bytes(60)


def _tx_batch(vni: int = 42) -> FrameBatch:
    b = FrameBatch(BATCH, 2048)
    for i in range(BATCH):
        b.append_frame(_frame(i), vni)
    return b


def _rx_batch(macs: int = 1) -> FrameBatch:
    b = FrameBatch(BATCH, 2048)
    for i in range(BATCH):
        f = bytearray(_frame(i))
        f[6:12] = (0x020000000000 + i % macs).to_bytes(6, "big")
        b.append_payload(wire.encapsulate(bytes(f), 42))
    return b


def _per_frame(benchmark: Any, n: int) -> None:
    benchmark.extra_info["frames_per_call"] = n


# --- headers ---------------------------------------------------------------------------------


def test_pack_single_struct(benchmark: Any) -> None:
    _per_frame(benchmark, 1)
    benchmark(wire.encode_header, 42)


def test_parse_single_struct(benchmark: Any) -> None:
    _per_frame(benchmark, 1)
    payload = wire.encapsulate(_frame(), 42)
    benchmark(wire.decapsulate, payload)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pack_batch(benchmark: Any, backend: str) -> None:
    _per_frame(benchmark, BATCH)
    fast = load(backend)
    b = _tx_batch()
    benchmark(fast.encap_batch, b, 49152, 65535)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parse_batch(benchmark: Any, backend: str) -> None:
    _per_frame(benchmark, BATCH)
    fast = load(backend)
    b = _rx_batch()
    benchmark(fast.decap_batch, b, False)


# --- engine ----------------------------------------------------------------------------------


def _engine(backend: str, remotes: tuple[str, ...] = ("198.18.0.2",)) -> Engine:
    e = Engine(backend=backend)
    e.add_segment(SegmentConfig(42, remotes=remotes))
    return e


@pytest.mark.parametrize("backend", BACKENDS)
def test_engine_encap_fdb_hit(benchmark: Any, backend: str) -> None:
    _per_frame(benchmark, BATCH)
    e = _engine(backend)
    e.segment(42).fdb.learn(b"\x02\x00\x00\x00\x00\x02", "198.18.0.2", 0.0)
    b = _tx_batch()

    def run() -> None:
        e.handle_frames(42, b, 1.0)
        e.datagrams_to_send()

    benchmark(run)


@pytest.mark.parametrize("backend", BACKENDS)
def test_engine_encap_flood2(benchmark: Any, backend: str) -> None:
    _per_frame(benchmark, BATCH)
    e = _engine(backend, ("198.18.0.2", "198.18.0.3"))
    b = _tx_batch()

    def run() -> None:
        e.handle_frames(42, b, 1.0)
        e.datagrams_to_send()
        list(e.events())

    benchmark(run)


@pytest.mark.parametrize("backend", BACKENDS)
def test_engine_decap_learn(benchmark: Any, backend: str) -> None:
    _per_frame(benchmark, BATCH)
    e = _engine(backend)
    b = _rx_batch(macs=BATCH)
    sources = ["198.18.0.2"] * BATCH

    def run() -> None:
        e.handle_datagrams(b, sources, 1.0)
        e.frames_to_device()
        list(e.events())

    benchmark(run)


# --- FDB at scale -----------------------------------------------------------------------------

_FDBS: dict[int, tuple[Fdb, float]] = {}


def _fdb(n: int) -> tuple[Fdb, float]:
    """An FDB holding ``n`` learned MACs from 100 VTEPs, and its bytes per entry."""
    if n not in _FDBS:
        _FDBS.clear()
        gc.collect()
        macs = [(0x020000000000 + i).to_bytes(6, "big") for i in range(n)]
        ips = [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(100)]
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        f = Fdb(ageing=300.0, max_learned=0, learn_rate=0)  # no limits: n entries
        for i, m in enumerate(macs):
            f.learn(m, ips[i % 100], 0.0)
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / n
        tracemalloc.stop()
        _FDBS[n] = (f, per_entry)
    return _FDBS[n]


def _sizes() -> list[int]:
    quick = os.environ.get("VXLANPY_MICRO_QUICK") == "1"
    return [10**3, 10**4] if quick else [10**3, 10**5, 10**6]


def pytest_generate_tests(metafunc: Any) -> None:
    """FDB sizes are chosen at collection time, after ``main`` has set quick mode."""
    if "n" in metafunc.fixturenames:
        metafunc.parametrize("n", _sizes())


def test_fdb_lookup(benchmark: Any, n: int) -> None:
    f, per_entry = _fdb(n)
    benchmark.extra_info["bytes_per_entry"] = round(per_entry, 1)
    _per_frame(benchmark, 1)
    mac = (0x020000000000 + n // 2).to_bytes(6, "big")
    benchmark(f.lookup, mac)


def test_fdb_learn_refresh(benchmark: Any, n: int) -> None:
    f, per_entry = _fdb(n)
    benchmark.extra_info["bytes_per_entry"] = round(per_entry, 1)
    _per_frame(benchmark, 1)
    mac = (0x020000000000 + n // 3).to_bytes(6, "big")
    benchmark(f.learn, mac, "198.18.0.1", 1.0)


# --- runner -----------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks micro")
    ap.add_argument("--quick", action="store_true", help="smoke run (CI): few rounds, small FDB")
    ap.add_argument("--out", default=str(HERE.parent / "docs"))
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "micro.json"
    args = [
        __file__,
        "-q",
        "-p",
        "no:cacheprovider",
        f"--benchmark-json={raw}",
        "--benchmark-sort=name",
        "-W",
        "ignore::pytest_benchmark.logger.PytestBenchmarkWarning",
    ]
    if a.quick:
        args += ["--benchmark-max-time=0.01", "--benchmark-min-rounds=2"]
    # read by _sizes() at collection time (pytest imports this file afresh)
    os.environ["VXLANPY_MICRO_QUICK"] = "1" if a.quick else "0"
    code = pytest.main(args)
    if code != 0:
        return int(code)
    data = json.loads(raw.read_text())
    # pytest-benchmark keeps every timing ("data"): tens of MB per run; the stats are enough
    for b in data.get("benchmarks", []):
        b.get("stats", {}).pop("data", None)
    raw.write_text(json.dumps(data, indent=1) + "\n")
    md = _markdown(data, "python -m benchmarks micro" + (" --quick" if a.quick else ""))
    (out / "micro.md").write_text(md)
    print(md)
    return 0


def _markdown(data: dict[str, Any], command: str) -> str:
    m = data.get("machine_info", {})
    lines = [
        "# Micro-benchmarks",
        "",
        f"Command: `{command}` (pytest-benchmark)  ",
        f"Machine: {m.get('cpu', {}).get('brand_raw', platform.processor())}, "
        f"Python {m.get('python_version', platform.python_version())}  ",
        "ns/frame = median time per call / frames per call.",
        "",
        "| benchmark | ns/call (median) | ns/frame | bytes/entry |",
        "|---|---|---|---|",
    ]
    for b in data["benchmarks"]:
        n = b["extra_info"].get("frames_per_call", 1)
        med = b["stats"]["median"] * 1e9
        bpe = b["extra_info"].get("bytes_per_entry", "")
        lines.append(f"| {b['name']} | {med:,.0f} | {med / n:,.1f} | {bpe} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
