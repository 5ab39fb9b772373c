"""The control server against hostile clients, in-process (no root): every line answered or
the connection closed with a reason, limits, timeouts, closed subscribers noticed at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vxlanpy.config import SegmentSpec, VtepConfig
from vxlanpy.control import ControlServer, RequestError, parse_request
from vxlanpy.events import L3Miss
from vxlanpy.tunnel import Vtep

VNI = 42


def _vtep() -> Vtep:
    cfg = VtepConfig(local="198.18.0.1", segments=[SegmentSpec(vni=VNI, remotes=["198.18.0.2"])])
    v = Vtep(cfg)
    v.engine.add_segment(cfg.segments[0].segment_config(local_mac=b"\x02\x00\x00\x00\x00\x01"))
    return v


async def _line(r: asyncio.StreamReader) -> dict[str, object]:
    raw = await asyncio.wait_for(r.readline(), 5)
    assert raw, "the server closed without answering"
    out = json.loads(raw)
    assert isinstance(out, dict)
    return out


async def _eof(r: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(r.read(), 5) == b""


async def _until(pred: object, timeout: float = 2.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.01)
    return False


class Served:
    def __init__(self, server: ControlServer) -> None:
        self.server = server
        self.writers: list[asyncio.StreamWriter] = []

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        r, w = await asyncio.open_unix_connection(self.server.path, limit=1 << 20)
        self.writers.append(w)
        return r, w


@contextlib.asynccontextmanager
async def _served(tmp_path: Path, **kw: float) -> AsyncIterator[Served]:
    server = ControlServer(_vtep(), str(tmp_path / "c.sock"), **kw)  # type: ignore[arg-type]
    await server.start()
    served = Served(server)
    try:
        yield served
    finally:
        for w in served.writers:
            w.transport.abort()
        await server.close()
        await asyncio.sleep(0)


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_parse_request_refusals() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(RequestError, match="nested too deeply"):
        parse_request(deep)
    with pytest.raises(RequestError, match="JSON object"):
        parse_request(b"[1, 2]")
    with pytest.raises(RequestError, match="malformed"):
        parse_request(b'{"cmd": "\xff\xfe"}')
    with pytest.raises(RequestError, match="malformed"):
        parse_request(b'{"n": ' + b"9" * 5000 + b"}")  # over Python's int digit limit
    assert parse_request(b'{"cmd": "stats"}\n') == {"cmd": "stats"}


def test_malformed_lines_answered_and_connection_goes_on(tmp_path: Path) -> None:
    async def main() -> None:
        async with _served(tmp_path) as s:
            r, w = await s.connect()
            bad = [
                b"not json",
                b"[" * 30_000,  # under the 64 KiB line limit, too deep for the parser
                b"[" * 30_000 + b"]" * 30_000,
                b'{"cmd": ["fdb"]}',
                b'{"cmd": "fdb", "op": {"x": 1}}',
                b'{"cmd": "fdb", "op": "add", "vni": true, "mac": "02:00:00:00:00:09"}',
                b'{"cmd": "fdb", "op": "add", "mac": "02:00:00:00:00:09", "dst": "::1"}',
                b'{"cmd": "fdb", "op": "add", "mac": 7, "dst": "198.18.0.9"}',
                b'{"cmd": "neigh", "op": "add", "ip": "x", "lladdr": "02:00:00:00:00:09"}',
                b"\xff\xfe\x00",
                b"",
            ]
            for line in bad:
                w.write(line + b"\n")
                resp = await _line(r)
                assert resp["ok"] is False and resp["error"], (line[:40], resp)
            w.write(b'{"cmd": "stats"}\n')
            resp = await _line(r)
            assert resp["ok"] is True
            w.close()
            assert await _until(lambda: s.server.clients == 0)

    run(main())


def test_fdb_dst_of_the_wrong_family_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with _served(tmp_path) as s:
            r, w = await s.connect()
            req = {"cmd": "fdb", "op": "add", "mac": "02:00:00:00:00:09", "dst": "::1"}
            w.write(json.dumps(req).encode() + b"\n")
            resp = await _line(r)
            assert resp == {
                "ok": False,
                "error": "dst ::1 is not an IPv4 address (the underlay's)",
            }
            req["dst"] = "198.18.0.9"
            w.write(json.dumps(req).encode() + b"\n")
            assert (await _line(r))["ok"] is True
            w.close()

    run(main())


def test_long_line_closed_with_a_reason(tmp_path: Path) -> None:
    async def main() -> None:
        async with _served(tmp_path) as s:
            r, w = await s.connect()
            w.write(b"x" * 200_000 + b"\n")
            resp = await _line(r)
            assert "over 65536 bytes" in str(resp["error"])
            assert await _eof(r)
            assert s.server.refused["too-long"] == 1

    run(main())


def test_idle_timeout(tmp_path: Path) -> None:
    async def main() -> None:
        async with _served(tmp_path, idle_timeout=0.3) as s:
            r, w = await s.connect()
            assert await _until(lambda: s.server.clients == 1)
            w.write(b'{"cmd": "sta')  # half a request, then nothing
            resp = await _line(r)
            assert resp["ok"] is False and "idle for 0.3 s" in str(resp["error"])
            assert await _eof(r)
            assert await _until(lambda: s.server.clients == 0)

    run(main())


def test_client_limit(tmp_path: Path) -> None:
    async def main() -> None:
        async with _served(tmp_path, max_clients=2) as s:
            held = [await s.connect() for _ in range(2)]
            assert await _until(lambda: s.server.clients == 2)
            r, w = await s.connect()
            resp = await _line(r)
            assert "too many clients (2)" in str(resp["error"])
            assert await _eof(r)
            # the held ones are still served; once one leaves, a new client gets in
            hr, hw = held[0]
            hw.write(b'{"cmd": "stats"}\n')
            assert (await _line(hr))["ok"] is True
            hw.close()
            assert await _until(lambda: s.server.clients == 1)
            r, w = await s.connect()
            w.write(b'{"cmd": "stats"}\n')
            assert (await _line(r))["ok"] is True

    run(main())


def test_subscriber_that_closes_is_noticed_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with _served(tmp_path, max_subscribers=1) as s:
            vtep = s.server.vtep
            r, w = await s.connect()
            w.write(b'{"cmd": "events"}\n')
            assert (await _line(r))["ok"] is True
            assert await _until(lambda: len(vtep._subscribers) == 1)
            # events reach it
            vtep.engine._event(L3Miss(VNI, "198.19.0.9"))
            vtep._dispatch_events()
            assert (await _line(r)) == {"event": "l3miss", "vni": VNI, "ip": "198.19.0.9"}
            # a second subscriber is over the limit
            r2, w2 = await s.connect()
            w2.write(b'{"cmd": "events"}\n')
            assert "too many event subscribers (1)" in str((await _line(r2))["error"])
            assert await _eof(r2)
            # the first one closes with no event pending: noticed without an event to write
            w.close()
            assert await _until(lambda: s.server.clients == 0 and not vtep._subscribers)
            # and its slot is free again
            r3, w3 = await s.connect()
            w3.write(b'{"cmd": "events"}\n')
            assert (await _line(r3))["ok"] is True
            w3.close()
            assert await _until(lambda: s.server.clients == 0 and not vtep._subscribers)
            leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            assert leftover == [], leftover

    run(main())


def test_client_that_does_not_read_is_dropped(tmp_path: Path) -> None:
    async def main() -> None:
        async with _served(tmp_path, write_timeout=0.3) as s:
            r, w = await s.connect()
            w.transport.set_write_buffer_limits(high=1 << 24)  # type: ignore[attr-defined]
            # pipelined requests whose answers are never read: the socket buffers fill up
            assert await _until(lambda: s.server.clients == 1)
            w.write(b'{"cmd": "stats"}\n' * 20_000)
            assert await _until(lambda: s.server.clients == 0, timeout=10)
            w.transport.abort()

    run(main())
