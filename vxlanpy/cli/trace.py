"""``vxlanpy-tunnel trace`` (what would happen to a packet, or ``--live``: what is happening)
and ``vxlanpy-tunnel capture`` (a pcapng file of packets and their decisions)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from ..capture import Capture
from ..config import load_config
from ..control import find_socket, request, stream
from ..framedesc import FrameError, build_frame
from ..trace import TraceRecord
from ..tracesim import engine_from_config, simulate
from ..tracetext import record_line, record_steps
from .common import UsageError, int_in, subcommand

__all__ = ["register"]


def _live_flags(p: argparse.ArgumentParser, count: int, timeout: float) -> None:
    p.add_argument(
        "--count",
        type=int_in("--count", 1, 1_000_000),
        default=count,
        help=f"stop after this many packets (default {count})",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        help=f"stop after this many seconds (default {timeout:g})",
    )
    p.add_argument(
        "--vni",
        type=int_in("VNI", 0, 0xFFFFFF),
        help="only this segment (trace without --live: the frame's segment)",
    )
    p.add_argument("--drops", action="store_true", help="only dropped packets")
    p.add_argument("--control", help="control socket of the running VTEP")


def register(sub: Any) -> None:
    t = subcommand(
        sub,
        "trace",
        "what the dataplane would do with a packet (or --live: does with each packet)",
        main,
    )
    t.add_argument(
        "words",
        nargs="*",
        help="the frame: [dst MAC] [src MAC] [vlan ID] "
        "arp who-has IP [tell IP] | ip SRC DST [icmp|udp|tcp] | ip6 SRC DST | ...",
    )
    t.add_argument("--hex", help="the frame as hex (instead of words)")
    t.add_argument(
        "--datagram",
        metavar="HEX",
        help="a received UDP payload (VXLAN header + frame) as hex, with --from",
    )
    t.add_argument(
        "--from",
        dest="source",
        metavar="IP",
        help="received from this VTEP (the frame is encapsulated with --vni)",
    )
    t.add_argument("--from-port", type=int_in("--from-port", 1, 65535), help="its UDP port")
    t.add_argument("-c", "--config", help="trace against this config file, no VTEP running")
    t.add_argument("--json", action="store_true", help="machine-readable output")
    t.add_argument("--live", action="store_true", help="trace real packets of a running VTEP")
    t.add_argument("--mac", help="--live: only frames from or to this MAC")
    t.add_argument("--ip", help="--live: only packets from or to this inner IP")
    t.add_argument("--direction", choices=("tx", "rx"), help="--live: only this direction")
    _live_flags(t, 10, 10.0)
    c = subcommand(
        sub, "capture", "write packets and their decisions to a pcapng file", capture_main
    )
    c.add_argument("-w", "--write", required=True, metavar="FILE", help="pcapng file to write")
    _live_flags(c, 1000, 60.0)


def _frame(a: argparse.Namespace) -> bytes | None:
    if a.hex is not None:
        if a.words:
            raise UsageError("give the frame as words or --hex, not both")
        try:
            return bytes.fromhex(a.hex)
        except ValueError:
            raise UsageError("--hex must be hex digits") from None
    if not a.words:
        return None
    try:
        return build_frame(a.words)
    except FrameError as exc:
        raise UsageError(f"frame: {exc}") from None


def _what_would_happen(a: argparse.Namespace) -> dict[str, Any]:
    frame = _frame(a)
    payload = None
    if a.datagram is not None:
        if frame is not None:
            raise UsageError("give --datagram or a frame, not both")
        if a.source is None:
            raise UsageError("--datagram needs --from IP (the VTEP it came from)")
        try:
            payload = bytes.fromhex(a.datagram)
        except ValueError:
            raise UsageError("--datagram must be hex digits") from None
    elif frame is None:
        raise UsageError("describe a frame (words or --hex), or give --datagram, or --live")
    if payload is None and a.vni is None:
        raise UsageError("give the segment: --vni N")
    if a.config:
        cfg, _ = load_config(a.config)
        port = cfg.dstport if a.from_port is None else a.from_port
        engine = engine_from_config(cfg)
        try:
            out = simulate(
                engine,
                now=0.0,
                vni=a.vni,
                frame=frame,
                payload=payload,
                source=a.source,
                source_port=port,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return out.to_dict()
    req: dict[str, Any] = {"cmd": "trace", "op": "simulate", "vni": a.vni, "source": a.source}
    if a.from_port is not None:
        req["source_port"] = a.from_port
    if frame is not None:
        req["frame"] = frame.hex()
    if payload is not None:
        req["payload"] = payload.hex()
    result: dict[str, Any] = request(find_socket(a.control), req, timeout=30.0)
    return result


def _print_outcome(out: dict[str, Any]) -> None:
    for r in out["records"]:
        print("\n".join(record_steps(r)))
    n, m = len(out["datagrams"]), len(out["to_device"])
    print(f"would send {n} datagram{'s' * (n != 1)}, write {m} frame{'s' * (m != 1)} to the device")
    for ev in out["events"]:
        print(f"  event: {' '.join(f'{k}={v}' for k, v in ev.items())}")


def _live(a: argparse.Namespace, with_bytes: bool) -> dict[str, Any]:
    req: dict[str, Any] = {
        "cmd": "trace",
        "op": "live",
        "count": a.count,
        "timeout": a.timeout,
        "vni": a.vni,
        "drops": a.drops,
        "bytes": with_bytes,
    }
    for key in ("mac", "ip", "direction"):
        if getattr(a, key, None) is not None:
            req[key] = getattr(a, key)
    return req


def main(a: argparse.Namespace) -> int:
    if not a.live:
        out = _what_would_happen(a)
        if a.json:
            print(json.dumps(out, indent=2))
        else:
            _print_outcome(out)
        return 0
    if a.words or a.hex or a.datagram or a.config:
        raise UsageError("--live traces real packets: no frame and no --config")
    end: dict[str, Any] = {}
    path = find_socket(a.control)
    for rec in stream(path, _live(a, False), timeout=a.timeout + 10, ready=_ready(a)):
        if rec.get("end"):
            end = rec
            break
        print(json.dumps(rec) if a.json else record_line(rec), flush=True)
    _summary(end)
    return 0


def _ready(a: argparse.Namespace) -> Callable[[], None]:
    def say() -> None:
        print(f"tracing up to {a.count} packets for {a.timeout:g} s", file=sys.stderr, flush=True)

    return say


def _summary(end: dict[str, Any]) -> None:
    if end:
        lost = f", {end['lost']} lost (this client read too slowly)" if end["lost"] else ""
        print(f"{end['records']} packets traced{lost}", file=sys.stderr, flush=True)


def capture_main(a: argparse.Namespace) -> int:
    path = find_socket(a.control)
    cfg = request(path, {"cmd": "config"})
    with open(a.write, "wb") as f:
        cap = Capture(f, cfg.get("local"), int(cfg.get("dstport", 4789)))
        end: dict[str, Any] = {}
        for rec in stream(path, _live(a, True), timeout=a.timeout + 10, ready=_ready(a)):
            if rec.get("end"):
                end = rec
                break
            r = TraceRecord.from_dict(rec)
            r.time = r.time or time.time()
            cap.record(r)
        cap.flush()
    _summary(end)
    print(f"{a.write}: {cap.writer.packets} packets of {cap.records} records", file=sys.stderr)
    return 0
