#!/usr/bin/env python3
"""Start a vxlanpy VTEP in the current network namespace and print its events.

Needs root (or CAP_NET_ADMIN + CAP_NET_RAW): it creates a TAP device and raw/UDP sockets.
Run it inside a network namespace of your own, e.g.:

    ip netns exec vxd-ev1 python docs/examples/vtep_events.py \
        --local 198.18.5.1 --remote 198.18.5.2 --vni 42 --address 198.19.5.1/24

The start-up line goes to stderr (as with ``vxlanpy-tunnel run``), the events (one JSON object a
line) and the final counters to stdout. It stops on Ctrl-C / SIGTERM, after --count events or
after --seconds, then prints the counters. Exit code 0, or 1 if the VTEP could not start or
failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys

from vxlanpy.config import SegmentSpec, VtepConfig
from vxlanpy.tunnel import Vtep, VtepError


async def main(a: argparse.Namespace) -> int:
    cfg = VtepConfig(
        local=a.local,
        dstport=a.dstport,
        segments=[
            SegmentSpec(
                vni=a.vni,
                tap=a.tap,
                address=a.address,
                remotes=a.remote,
                ageing=a.ageing,
            )
        ],
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    try:
        async with Vtep(cfg) as vtep:  # start(): TAP + sockets; close() on exit
            print(vtep.describe(), file=sys.stderr, flush=True)

            async def show() -> None:
                n = 0
                async for ev in vtep.events():  # ends when the VTEP stops
                    print(json.dumps(ev.to_dict()), flush=True)
                    n += 1
                    if a.count and n >= a.count:
                        stop.set()
                        return

            printer = asyncio.ensure_future(show())
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(vtep.wait_stopped())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED, timeout=a.seconds)
            for t in [*waits, printer]:
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await printer
            seg = vtep.stats()["segments"][a.vni]
            print("counters:", json.dumps({k: v for k, v in seg.items() if v}), flush=True)
            if vtep.failure is not None:
                print(f"VTEP failed: {vtep.failure}", file=sys.stderr)
                return 1
    except VtepError as exc:
        print(f"cannot start the VTEP: {exc}", file=sys.stderr)
        return 1
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--local", required=True, help="local underlay IP")
    p.add_argument("--remote", action="append", default=[], help="remote VTEP (repeatable)")
    p.add_argument("--vni", type=int, default=42)
    p.add_argument("--dstport", type=int, default=4789)
    p.add_argument("--tap", default="vx42", help="TAP name")
    p.add_argument("--address", help="overlay address for the TAP, CIDR")
    p.add_argument("--ageing", type=float, default=300.0, help="FDB ageing, seconds")
    p.add_argument("--count", type=int, default=0, help="stop after this many events")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long")
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
