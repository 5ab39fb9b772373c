"""The control socket's ``trace`` requests, in-process (no root): what would happen through a
copy of the running engine, live streams bounded by count and timeout, bad arguments answered
with an error and the connection going on, the tracer gone with the last subscriber."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from test_control_server import _line, _served, _until, run

from vxlanpy.framedesc import build_frame

VNI = 42
BCAST = build_frame("dst ff:ff:ff:ff:ff:ff ip 198.19.0.1 198.19.0.255".split())


async def _ask(w: asyncio.StreamWriter, req: dict[str, object]) -> None:
    w.write(json.dumps(req).encode() + b"\n")
    await w.drain()


def test_simulate_and_bad_arguments(tmp_path: Path) -> None:
    async def main() -> None:
        async with _served(tmp_path) as s:
            r, w = await s.connect()
            await _ask(w, {"cmd": "trace", "op": "simulate", "vni": VNI, "frame": BCAST.hex()})
            ans = await _line(r)
            assert ans["ok"], ans
            rec = ans["result"]["records"][0]  # type: ignore[index]
            assert (rec["rule"], rec["remotes"][0]["ip"]) == ("flood", "198.18.0.2")
            assert s.server.vtep.engine.segment(VNI).counters.floods == 0  # a copy did it
            for bad, why in [
                ({"op": "simulate", "vni": VNI, "frame": "zz"}, "hex"),
                ({"op": "simulate", "vni": 7, "frame": BCAST.hex()}, "not configured"),
                ({"op": "simulate", "vni": "42", "frame": BCAST.hex()}, "wrong type"),
                ({"op": "dance"}, "unknown trace operation"),
                ({"op": "live", "count": 0}, "'count'"),
                ({"op": "live", "timeout": 1e9}, "'timeout'"),
                ({"op": "live", "direction": "up"}, "'direction'"),
                ({"op": "live", "drops": "yes"}, "wrong type"),
            ]:
                await _ask(w, {"cmd": "trace", **bad})
                ans = await _line(r)
                assert not ans["ok"] and why in str(ans["error"]), (bad, ans)
            await _ask(w, {"cmd": "stats"})  # the connection goes on
            assert (await _line(r))["ok"]

    run(main())


def test_live_stream_bounded(tmp_path: Path) -> None:
    async def main() -> None:
        async with _served(tmp_path) as s:
            engine = s.server.vtep.engine
            r, w = await s.connect()
            await _ask(w, {"cmd": "trace", "op": "live", "count": 2, "timeout": 5, "bytes": True})
            assert (await _line(r)) == {"ok": True}
            assert engine.tracer is not None
            for _ in range(3):
                engine.handle_frame(VNI, BCAST, 1.0)
            got = [await _line(r) for _ in range(3)]
            assert [g.get("rule") for g in got[:2]] == ["flood", "flood"]
            assert got[0]["frame_hex"] == BCAST.hex()
            assert got[2] == {"end": True, "records": 2, "lost": 0}
            # no traffic: the timeout ends it
            await _ask(w, {"cmd": "trace", "op": "live", "count": 5, "timeout": 0.3})
            assert (await _line(r)) == {"ok": True}
            assert (await _line(r)) == {"end": True, "records": 0, "lost": 0}
            await asyncio.sleep(0.05)
            assert engine.tracer is None  # off again once no one traces

    run(main())


def test_a_live_client_that_leaves_is_noticed_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with _served(tmp_path) as s:
            engine = s.server.vtep.engine
            r, w = await s.connect()
            await _ask(w, {"cmd": "trace", "op": "live", "count": 10, "timeout": 600})
            assert (await _line(r)) == {"ok": True}
            assert engine.tracer is not None
            w.close()
            assert await _until(lambda: engine.tracer is None and s.server.clients == 0)

    run(main())
