"""Tracing a running VTEP: sinks on its engine's tracer (set while there is one, None when the
last leaves: tracing off costs nothing), a bounded stream of records per client, and the
capture from start (``run --capture FILE``).

A client never holds up the dataplane: its records go to a queue of ``maxsize``; past that
they are dropped and counted (``TraceStream.lost``), and the stream ends after ``count``
records or ``timeout`` seconds, or when the VTEP stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, BinaryIO

from .capture import Capture
from .trace import TraceFilter, Tracer, TraceRecord

if TYPE_CHECKING:
    from .engine import Engine
    from .tunnel import Vtep

__all__ = ["add_sink", "remove_sink", "TraceStream", "start_capture", "stop_capture"]

log = logging.getLogger("vxlanpy")


def add_sink(engine: Engine, sink: object, flt: TraceFilter | None = None) -> int:
    """Give ``engine`` a tracer (if it has none) and ``sink`` to it; a token to remove it."""
    first = engine.tracer is None
    if first:
        engine.tracer = Tracer()
    assert engine.tracer is not None
    token = engine.tracer.add(sink, flt)  # type: ignore[arg-type]
    if first and engine.on_tracing is not None:
        engine.on_tracing(True)
    return token


def remove_sink(engine: Engine, token: int) -> None:
    """Remove a sink; with none left, the engine has no tracer again."""
    t = engine.tracer
    if t is None:
        return
    t.remove(token)
    if not len(t):
        engine.tracer = None
        if engine.on_tracing is not None:
            engine.on_tracing(False)


class TraceStream:
    """The records of a running VTEP that match ``flt``, for one client (see the module
    docstring). Use ``async for rec in stream.records(count, timeout)``, then ``close()``."""

    def __init__(self, vtep: Vtep, flt: TraceFilter, maxsize: int = 1024) -> None:
        self.vtep = vtep
        self.queue: asyncio.Queue[TraceRecord] = asyncio.Queue(maxsize)
        self.lost = 0
        self.sent = 0
        self._token: int | None = add_sink(vtep.engine, self._put, flt)

    def _put(self, rec: TraceRecord) -> None:
        try:
            self.queue.put_nowait(rec)
        except asyncio.QueueFull:
            self.lost += 1

    async def records(
        self, count: int, timeout: float, until: asyncio.Future[None] | None = None
    ) -> AsyncIterator[TraceRecord]:
        """Up to ``count`` records for at most ``timeout`` seconds, or until the VTEP stops or
        ``until`` is done (the client left)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        stop = asyncio.ensure_future(self.vtep.wait_stopped())
        try:
            while self.sent < count:
                left = deadline - loop.time()
                if left <= 0:
                    return
                get = asyncio.ensure_future(self.queue.get())
                waits: set[asyncio.Future[Any]] = {get, stop}
                if until is not None:
                    waits.add(until)
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await get
                    return
                self.sent += 1
                yield get.result()
        finally:
            stop.cancel()

    def close(self) -> None:
        if self._token is not None:
            remove_sink(self.vtep.engine, self._token)
            self._token = None


class _FileCapture:
    def __init__(self, f: BinaryIO, capture: Capture, token: int) -> None:
        self.f, self.capture, self.token = f, capture, token


def start_capture(vtep: Vtep) -> object | None:
    """``config.capture``: write every record (only drops with ``capture_drops``) to that file
    from now on; None if the configuration asks for no capture."""
    cfg = vtep.config
    if not cfg.capture:
        return None
    f = open(cfg.capture, "wb")  # noqa: SIM115 (closed by stop_capture)
    cap = Capture(f, cfg.local, cfg.dstport)
    token = add_sink(vtep.engine, cap.record, TraceFilter(drops=cfg.capture_drops))
    return _FileCapture(f, cap, token)


def stop_capture(vtep: Vtep, handle: object | None) -> None:
    """Stop a capture ``start_capture`` started and close its file."""
    if not isinstance(handle, _FileCapture):
        return
    remove_sink(vtep.engine, handle.token)
    with contextlib.suppress(OSError):
        handle.f.close()
    log.info("capture %s: %d records", vtep.config.capture, handle.capture.records)


# --- control-socket requests (control.py) ------------------------------------------------------

MAX_COUNT = 1_000_000
MAX_TIMEOUT = 3600.0


def _opt(req: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    v = req.get(key)
    if v is not None and (not isinstance(v, kind) or isinstance(v, bool) and kind is not bool):
        raise ValueError(f"{key!r} has the wrong type: {v!r}")
    return v


def live_filter(req: dict[str, Any]) -> tuple[TraceFilter, int, float, bool]:
    """A ``trace`` ``live`` request's filter, count, timeout and whether records carry their
    bytes; ValueError for a bad one."""
    count = _opt(req, "count", int)
    count = 100 if count is None else count
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"'count' must be in 1..{MAX_COUNT}, got {count}")
    timeout = _opt(req, "timeout", (int, float))
    timeout = 10.0 if timeout is None else float(timeout)
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ValueError(f"'timeout' must be in (0, {MAX_TIMEOUT:g}] seconds, got {timeout}")
    direction = _opt(req, "direction", str)
    if direction not in (None, "tx", "rx"):
        raise ValueError(f"'direction' is tx or rx, got {direction!r}")
    flt = TraceFilter(
        vni=_opt(req, "vni", int),
        mac=_opt(req, "mac", str),
        ip=_opt(req, "ip", str),
        direction=direction,
        drops=bool(_opt(req, "drops", bool)),
    )
    return flt, count, timeout, bool(_opt(req, "bytes", bool))


def simulate_request(vtep: Vtep, req: dict[str, Any]) -> dict[str, Any]:
    """Answer a ``trace`` ``simulate`` request: ``frame`` (hex) from the device of ``vni``, or
    a received ``payload`` (hex; or ``frame`` with ``vni``) from ``source`` (and
    ``source_port``), through a copy of the running engine (tracesim.py)."""
    from .tracesim import clone_engine, simulate

    def hexarg(key: str) -> bytes | None:
        v = _opt(req, key, str)
        if v is None:
            return None
        try:
            return bytes.fromhex(v)
        except ValueError:
            raise ValueError(f"{key!r} must be hex") from None

    if req.get("op", "simulate") != "simulate":
        raise ValueError(f"unknown trace operation {req.get('op')!r} (simulate, live)")
    port = _opt(req, "source_port", int)
    out = simulate(
        clone_engine(vtep.engine),
        now=asyncio.get_running_loop().time(),  # the VTEP's clock (its loop's)
        vni=_opt(req, "vni", int),
        frame=hexarg("frame"),
        payload=hexarg("payload"),
        source=_opt(req, "source", str),
        source_port=vtep.config.dstport if port is None else port,
    )
    return out.to_dict()
