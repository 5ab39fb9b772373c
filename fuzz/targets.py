"""Fuzz targets (atheris / libFuzzer): each takes one input and raises only on a bug.

- ``config``: the TOML config loader (:func:`vxlanpy.config.parse_config`): a config or a
  ConfigError, nothing else;
- ``control``: the control protocol, one request line through :func:`parse_request` and
  :meth:`ControlServer.handle`: a RequestError, or an answer that is JSON and not an internal
  error;
- ``table``: ``vxlanpy-tunnel fdb|neigh ...`` argument lists through the CLI's argparse and
  :func:`table_request`: a UsageError, or a request the control server answers (as above);
- ``rx-python``, ``rx-cffi``: received datagrams through ``Engine.handle_datagrams`` on one
  kernels backend: counted drops or frames within the datagrams, never an exception;
  ``rx-compare``: the same input through both backends, which must agree;
- ``rx-datapath``: the same datagrams through the C datapath (rx.c, table.c) and through the
  engine alone, which must agree.

``run.py`` runs one; ``tests/test_fuzz.py`` runs each briefly; ``make fuzz`` runs them long
(``rx-cffi`` and ``rx-datapath`` on the C extension built with ASan and UBSan).
"""

from __future__ import annotations

import argparse  # noqa: F401  (imported before the instrumented block: not instrumented)
import asyncio
import contextlib
import ctypes  # noqa: F401
import glob  # noqa: F401
import io
import json
import pwd  # noqa: F401
from collections.abc import Callable
from typing import Any

import atheris
import pyroute2  # noqa: F401
import uvloop  # noqa: F401

with atheris.instrument_imports():
    import tomllib  # noqa: F401  (instrumented for the config target)

    from vxlanpy import stats
    from vxlanpy.batch import FrameBatch
    from vxlanpy.cli import build_parser
    from vxlanpy.cli.client import table_request
    from vxlanpy.cli.common import UsageError
    from vxlanpy.config import ConfigError, SegmentSpec, VtepConfig, parse_config
    from vxlanpy.control import ControlServer, RequestError, parse_request
    from vxlanpy.datapath import Datapath, set_source
    from vxlanpy.engine import Engine, SegmentConfig
    from vxlanpy.tunnel import Vtep

__all__ = ["TARGETS"]

VNI = 42
LOCAL_MAC = b"\x02\x00\x00\x00\x00\x01"
SOURCES = ("198.18.0.2", "198.18.0.3", "2001:db8::2")
_LOOP = asyncio.new_event_loop()  # only its clock: fdb show asks the VTEP for the time


def config(data: bytes) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(data, "fuzz.toml")


def _vtep() -> Vtep:
    cfg = VtepConfig(
        local="198.18.0.1",
        segments=[
            SegmentSpec(vni=VNI, remotes=["198.18.0.2"], proxy=True, max_addresses=64),
            SegmentSpec(vni=7, tap="vx7"),
        ],
    )
    v = Vtep(cfg)
    for spec in cfg.segments:
        v.engine.add_segment(spec.segment_config(local_mac=LOCAL_MAC))
    v._loop = _LOOP  # a VTEP that is not started: the control server only needs its tables
    return v


def _answer(server: ControlServer, req: dict[str, Any]) -> None:
    resp = server.handle(req)
    json.dumps(resp, default=str)
    if resp.get("ok") is not True and str(resp.get("error", "")).startswith("internal error"):
        raise AssertionError(f"{req!r} -> {resp!r}")


def control(data: bytes) -> None:
    try:
        req = parse_request(data)
    except RequestError:
        return
    _answer(ControlServer(_vtep(), "/nonexistent/fuzz.sock"), req)


_PARSER = build_parser()
_WORDS = ["fdb", "neigh", "show", "add", "append", "replace", "del", "dst", "port", "vni"]
_WORDS += ["lladdr", "--vni", "--json", "--control", "02:00:00:00:00:09", "198.18.0.9", "42"]


def table(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    argv = [("fdb", "neigh")[fdp.ConsumeIntInRange(0, 1)]]
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        if fdp.ConsumeBool():
            argv.append(_WORDS[fdp.ConsumeIntInRange(0, len(_WORDS) - 1)])
        else:
            argv.append(fdp.ConsumeUnicodeNoSurrogates(24))
    if any(a.startswith("-h") or a.startswith("--h") for a in argv):
        return  # --help prints and exits: not a parse
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            a = _PARSER.parse_args(argv)
        req = table_request(a.command, a.op, a.vni, a.args)
    except UsageError:
        return
    line = json.dumps(req).encode()
    _answer(ControlServer(_vtep(), "/nonexistent/fuzz.sock"), parse_request(line))


def rx_input(flags: int, datagrams: list[tuple[int, bytes]]) -> bytes:
    """The input ``rx-*`` reads: a flags byte (strict, learning, allow_vlan, max_addresses in
    bits 3-5), then per datagram a source index byte, a 2-byte length and the payload."""
    out = bytearray([flags])
    for src, payload in datagrams:
        out += bytes([src]) + len(payload).to_bytes(2, "big") + payload
    return bytes(out)


def _datagrams(data: bytes, batch: FrameBatch) -> list[str]:
    sources: list[str] = []
    i = 1
    while batch.count < batch.capacity and i + 3 <= len(data):
        src, n = data[i], int.from_bytes(data[i + 1 : i + 3], "big")
        batch.append_payload(data[i + 3 : i + 3 + min(n, batch.max_frame + 8)])
        sources.append(SOURCES[src % len(SOURCES)])
        i += 3 + n
    return sources


def _rx_run(backend: str, data: bytes) -> tuple[Any, ...]:
    """Feed the datagrams ``data`` encodes (:func:`rx_input`) to a fresh engine; what it did."""
    flags = data[0] if data else 0
    eng = Engine(backend=backend, strict=bool(flags & 1))
    eng.add_segment(
        SegmentConfig(
            vni=VNI,
            remotes=["198.18.0.2"],
            learning=bool(flags & 2),
            allow_vlan=bool(flags & 4),
            max_addresses=(flags >> 3) & 7,
            local_mac=LOCAL_MAC,
        )
    )
    batch = FrameBatch(8, 1600)
    sources = _datagrams(data, batch)
    count = batch.count
    eng.handle_datagrams(batch, sources, 1.0)
    frames = [(f.vni, bytes(f.frame), f.slot) for f in eng.frames_to_device()]
    for _vni, frame, slot in frames:
        assert 0 <= slot < count and 14 <= len(frame) <= batch.max_frame
    eng.handle_timer(1000.0)
    events = [ev.to_dict() for ev in eng.events()]
    st = stats.segment_stats(eng, VNI)
    drops = eng.counters.dropped + st["dropped"]
    assert st["rx_packets"] + drops == count, (st, eng.counters.to_dict(), count)
    return frames, events, st, eng.counters.to_dict(), eng.checksums_completed


def _rx_datapath_run(data: bytes, fast: bool) -> tuple[Any, ...]:
    """The same datagrams twice to an engine with the C datapath attached (``fast``; the
    second round meets what the first installed) or without: frames per (VNI, source MAC),
    events and counters."""
    flags = data[0] if data else 0
    eng = Engine(backend="cffi", strict=bool(flags & 1))
    eng.add_segment(
        SegmentConfig(
            vni=VNI,
            remotes=["198.18.0.2"],
            learning=bool(flags & 2),
            allow_vlan=bool(flags & 4),
            max_addresses=(flags >> 3) & 7,
            local_mac=LOCAL_MAC,
            allow=["198.18.0.2/31"] if flags & 0x40 else None,
        )
    )
    if fast:
        eng.attach_datapath(Datapath())
    frames: dict[tuple[int, bytes], list[bytes]] = {}
    for now in (1.0, 2.0):
        batch = FrameBatch(8, 1600)
        sources = _datagrams(data, batch)
        if fast:
            for k, src in enumerate(sources):
                set_source(batch, k, src)
            eng.forward_datagrams(batch, now)
        else:
            eng.handle_datagrams(batch, sources, now)
        for f in eng.frames_to_device():
            frames.setdefault((f.vni, bytes(f.frame[6:12])), []).append(bytes(f.frame))
    events = [ev.to_dict() for ev in eng.events()]
    return frames, events, stats.segment_stats(eng, VNI), eng.counters.to_dict()


def rx_datapath(data: bytes) -> None:
    """The C datapath (rx.c: matching against what the engine installed, allowlist prefixes)
    against the plain engine: the same outputs."""
    got, want = _rx_datapath_run(data, True), _rx_datapath_run(data, False)
    if got != want:
        raise AssertionError(f"datapath differs:\nC      {got!r}\nengine {want!r}")


def rx_python(data: bytes) -> None:
    _rx_run("python", data)


def rx_cffi(data: bytes) -> None:
    _rx_run("cffi", data)


def rx_compare(data: bytes) -> None:
    got = _rx_run("cffi", data)
    want = _rx_run("python", data)
    if got != want:
        raise AssertionError(f"backends differ:\ncffi   {got!r}\npython {want!r}")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "config": config,
    "control": control,
    "table": table,
    "rx-python": rx_python,
    "rx-cffi": rx_cffi,
    "rx-compare": rx_compare,
    "rx-datapath": rx_datapath,
}
