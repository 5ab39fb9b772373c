"""Client commands of a running VTEP, over its control socket: fdb, neigh, stats, events."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

from ..control import find_socket, request, stream
from ..render import event_line, fdb_line, neigh_line, stats_text
from .common import UsageError, int_in, subcommand

__all__ = ["register", "client_parser"]


def client_parser(
    sub: Any, name: str, helptext: str, func: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    """A subcommand that talks to a running VTEP: ``--control`` and ``--json``."""
    c = subcommand(sub, name, helptext, func)
    c.add_argument("--control", help="control socket of the running VTEP")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    return c


def register(sub: Any) -> None:
    fdb = client_parser(
        sub, "fdb", "show or change the FDB of a running VTEP (as `bridge fdb`)", main
    )
    fdb.add_argument("op", choices=("show", "add", "append", "replace", "del"))
    fdb.add_argument("args", nargs="*", help="MAC dst IP [port N] [vni N]")
    fdb.add_argument("--vni", type=int_in("VNI", 0, 0xFFFFFF), help="segment (default: all)")
    neigh = client_parser(sub, "neigh", "show or change the neighbour table (as `ip neigh`)", main)
    neigh.add_argument("op", choices=("show", "add", "replace", "del"))
    neigh.add_argument("args", nargs="*", help="IP lladdr MAC")
    neigh.add_argument("--vni", type=int_in("VNI", 0, 0xFFFFFF), help="segment (default: all)")
    client_parser(sub, "stats", "counters of a running VTEP", main)
    ev = client_parser(
        sub, "events", "stream events of a running VTEP (learn, move, age, ...)", main
    )
    ev.add_argument("--count", type=int, help="stop after this many events")


def _kv(args: list[str], allowed: Sequence[str]) -> dict[str, str]:
    if len(args) % 2:
        raise UsageError(f"expected KEY VALUE pairs ({' / '.join(allowed)}), got {' '.join(args)}")
    out = {}
    for k, v in zip(args[::2], args[1::2], strict=True):
        if k not in allowed:
            raise UsageError(f"unknown keyword {k!r} (expected {' / '.join(allowed)})")
        out[k] = v
    return out


def _to_int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{what} must be an integer, got {text!r}") from None


def table_request(command: str, op: str, vni: int | None, args: list[str]) -> dict[str, Any]:
    """The control request for ``fdb``/``neigh`` OP ARGS (iproute2's keywords); UsageError
    for a malformed argument list."""
    req: dict[str, Any] = {"cmd": command, "op": op, "vni": vni}
    if command == "fdb" and op != "show":
        if not args:
            raise UsageError(f"fdb {op} needs a MAC")
        kv = _kv(args[1:], ("dst", "port", "vni"))
        req["mac"] = args[0]
        req["dst"] = kv.get("dst")
        if "port" in kv:
            req["port"] = _to_int(kv["port"], "port")
        if "vni" in kv:
            req["remote_vni"] = _to_int(kv["vni"], "vni")
    elif command == "neigh" and op != "show":
        if not args:
            raise UsageError(f"neigh {op} needs an IP")
        req["ip"] = args[0]
        req["lladdr"] = _kv(args[1:], ("lladdr",)).get("lladdr")
    elif args:
        raise UsageError(f"{command} show takes no arguments")
    return req


def main(a: argparse.Namespace) -> int:
    path = find_socket(a.control)
    out: Any
    if a.command == "stats":
        out = request(path, {"cmd": "stats"})
        print(json.dumps(out, indent=2) if a.json else stats_text(out))
        return 0
    if a.command == "events":
        n = 0
        for ev in stream(path, {"cmd": "events"}):
            print(json.dumps(ev) if a.json else event_line(ev), flush=True)
            n += 1
            if a.count and n >= a.count:
                break
        return 0
    out = request(path, table_request(a.command, a.op, a.vni, a.args))
    if a.op == "show":
        if a.json:
            print(json.dumps(out, indent=2))
        else:
            for row in out:
                print(fdb_line(row) if a.command == "fdb" else neigh_line(row))
    return 0
