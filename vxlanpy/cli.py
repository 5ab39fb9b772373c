"""``vxlanpy-tunnel``: run and operate userspace VTEPs, in iproute2's vocabulary.

    vxlanpy-tunnel run --vni 42 --local IP --remote IP ...   |  run --config FILE
    vxlanpy-tunnel fdb show | add|append|replace MAC dst IP [port N] [vni N] | del MAC [dst IP]
    vxlanpy-tunnel neigh show | add|replace IP lladdr MAC | del IP
    vxlanpy-tunnel stats | events | export (--config FILE | --control PATH)
    vxlanpy-tunnel lab [--hosts 2|3] [--peer kernel|vxlanpy] [--keep]

Exit codes: 0 success, 1 runtime error (privileges, TAP name taken, port in use, TAP vanished,
VTEP unreachable, request refused), 2 bad command line or configuration. Errors are one line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from . import fastpath
from .config import ConfigError, SegmentSpec, VtepConfig, load_config, parse_srcport
from .control import ControlError, ControlServer, default_path, find_socket, request, stream
from .export import export_commands
from .tunnel import Vtep, VtepError, install_uvloop
from .wire import VXLAN_PORT, VXLAN_PORT_LINUX

PROG = "vxlanpy-tunnel"
log = logging.getLogger("vxlanpy")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump); the caller exits with code 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _pair(what: str):  # type: ignore[no-untyped-def]
    def parse(text: str) -> tuple[str, str]:
        left, s, right = text.partition("=")
        if not s or not left or not right:
            raise argparse.ArgumentTypeError(f"must look like {what}, got {text!r}")
        return left, right

    return parse


def _int_in(name: str, lo: int, hi: int):  # type: ignore[no-untyped-def]
    def parse(text: str) -> int:
        try:
            v = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{name} must be in {lo}..{hi}, got {v}")
        return v

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Userspace VXLAN tunnel endpoint (RFC 7348).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a VTEP until SIGINT/SIGTERM")
    run.add_argument("--config", help="TOML config file (instead of the flags below)")
    run.add_argument("--control", help="control socket path (default /run/vxlanpy/<tap>.sock)")
    run.add_argument("--vni", type=_int_in("VNI", 0, 0xFFFFFF), help="VXLAN network identifier")
    run.add_argument("--local", help="local underlay IP (source of outer packets)")
    run.add_argument("--remote", action="append", default=[], help="remote VTEP (repeatable)")
    run.add_argument("--group", help="multicast group for BUM traffic (with --dev)")
    run.add_argument("--dev", help="underlay device (multicast, MTU)")
    run.add_argument(
        "--dstport",
        type=_int_in("dstport", 1, 65535),
        default=VXLAN_PORT,
        help=f"UDP port ({VXLAN_PORT} IANA, {VXLAN_PORT_LINUX} Linux/flannel)",
    )
    run.add_argument("--tap", help="TAP device name (default vxlan<VNI>)")
    run.add_argument("--address", help="overlay address for the TAP, CIDR")
    run.add_argument("--mtu", type=int, help="TAP MTU (default underlay MTU - 50/70)")
    run.add_argument("--bridge", help="enslave the TAP to this Linux bridge")
    run.add_argument("--mac", help="MAC address for the TAP")
    run.add_argument("--no-learning", action="store_true", help="do not learn remote MACs")
    run.add_argument("--ageing", type=float, default=300.0, help="FDB ageing, s (0 = never)")
    run.add_argument("--max-address", type=int, default=0, help="FDB size limit (0 = none)")
    run.add_argument("--proxy", action="store_true", help="answer ARP from the neighbour table")
    run.add_argument(
        "--fdb",
        action="append",
        default=[],
        type=_pair("MAC=IP"),
        help="static FDB entry MAC=IP (00:00:00:00:00:00=IP appends to the flood list)",
    )
    run.add_argument("--neigh", action="append", default=[], type=_pair("IP=MAC"), help="IP=MAC")
    run.add_argument("--srcport", default="49152:65535", help="source port range MIN:MAX")
    run.add_argument("--ttl", type=int, help="outer TTL / hop limit")
    run.add_argument("--tos", type=int, help="outer TOS / traffic class")
    run.add_argument("--df", choices=("unset", "set"), default="unset", help="outer DF bit")
    run.add_argument("--strict", action="store_true", help="drop packets with reserved bits set")
    run.add_argument("--allow-vlan", action="store_true", help="carry 802.1Q-tagged frames")
    run.add_argument("--no-uvloop", action="store_true", help="use the plain asyncio loop")
    run.add_argument(
        "--no-offload", action="store_true", help="no TAP checksum/TSO offloads (IFF_VNET_HDR)"
    )
    run.add_argument(
        "--no-fast-path",
        action="store_true",
        help="no C forwarding cache: the Python engine handles every frame (slower)",
    )
    run.add_argument(
        "--no-send-thread",
        action="store_true",
        help="send TCP super-frames from the event loop's thread instead of a C sender "
        "thread (one core instead of two)",
    )
    run.add_argument(
        "--no-gro",
        action="store_true",
        help="no UDP_GRO on the receiving socket: every datagram is received and written to "
        "the TAP on its own",
    )
    run.add_argument(
        "--busy-poll",
        type=int,
        default=0,
        metavar="USEC",
        help="after traffic, poll up to USEC microseconds for the next packet instead of "
        "sleeping (lower latency, burns CPU; 0 = off)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="log every event")

    def client(name: str, helptext: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=helptext)
        c.add_argument("--control", help="control socket of the running VTEP")
        c.add_argument("--json", action="store_true", help="machine-readable output")
        return c

    fdb = client("fdb", "show or change the FDB of a running VTEP (as `bridge fdb`)")
    fdb.add_argument("op", choices=("show", "add", "append", "replace", "del"))
    fdb.add_argument("args", nargs="*", help="MAC dst IP [port N] [vni N]")
    fdb.add_argument("--vni", type=_int_in("VNI", 0, 0xFFFFFF), help="segment (default: all)")
    neigh = client("neigh", "show or change the neighbour table (as `ip neigh`)")
    neigh.add_argument("op", choices=("show", "add", "replace", "del"))
    neigh.add_argument("args", nargs="*", help="IP lladdr MAC")
    neigh.add_argument("--vni", type=_int_in("VNI", 0, 0xFFFFFF), help="segment (default: all)")
    client("stats", "counters of a running VTEP")
    ev = client("events", "stream events of a running VTEP (learn, move, age, miss, drop)")
    ev.add_argument("--count", type=int, help="stop after this many events")

    ex = sub.add_parser("export", help="print the equivalent kernel (iproute2) configuration")
    ex.add_argument("--config", help="TOML config file")
    ex.add_argument("--control", help="control socket of a running VTEP")

    lab = sub.add_parser("lab", help="build a namespace lab, test the overlay, tear it down")
    lab.add_argument("--hosts", type=int, choices=(2, 3), default=2)
    lab.add_argument("--peer", choices=("kernel", "vxlanpy"), default="kernel")
    lab.add_argument("--vni", type=_int_in("VNI", 0, 0xFFFFFF), default=120)
    lab.add_argument("--dstport", type=_int_in("dstport", 1, 65535), default=VXLAN_PORT)
    lab.add_argument("--seconds", type=float, default=3.0, help="TCP test duration")
    lab.add_argument("--keep", action="store_true", help="leave the lab up")
    lab.add_argument("--stop", metavar="TAG", help="tear down a lab left up with --keep")
    return p


# run flags that --config replaces (the others: --config, --control, --no-uvloop, --verbose,
# --no-offload, --no-fast-path, --no-send-thread, --no-gro, apply to both forms)
_SWITCHES = ("offload", "fast_path", "send_thread", "gro")  # --no-* flags of VtepConfig fields
_NOT_CONFIG = {"command", "config", "control", "no_uvloop", "verbose"} | {
    "no_" + key for key in _SWITCHES
}
_RUN_DEFAULTS: dict[str, object] = {}


def _config_flags(a: argparse.Namespace) -> list[str]:
    if not _RUN_DEFAULTS:
        d = build_parser().parse_args(["run", "--vni", "0"])
        _RUN_DEFAULTS.update(vars(d))
        _RUN_DEFAULTS["vni"] = None
    return [f for f in vars(a) if f not in _NOT_CONFIG]


def config_from_args(a: argparse.Namespace) -> tuple[VtepConfig, str | None]:
    if a.config:
        given = [f for f in _config_flags(a) if getattr(a, f) != _RUN_DEFAULTS[f]]
        if given:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            raise ConfigError(f"{flags}: put it in the config file (--config takes no VTEP flags)")
        cfg, control = load_config(a.config)
        for key in _SWITCHES:  # --no-KEY turns off what the file may have on
            if getattr(a, "no_" + key):
                setattr(cfg, key, False)
        return cfg, a.control or control
    if a.vni is None:
        raise UsageError("run needs --vni (or --config FILE)")
    seg = SegmentSpec(
        vni=a.vni,
        tap=a.tap,
        address=a.address,
        mtu=a.mtu,
        bridge=a.bridge,
        mac=a.mac,
        remotes=list(a.remote),
        group=a.group,
        learning=not a.no_learning,
        ageing=a.ageing,
        max_addresses=a.max_address,
        proxy=a.proxy,
        allow_vlan=a.allow_vlan,
        fdb=list(a.fdb),
        neigh=list(a.neigh),
    )
    cfg = VtepConfig(
        segments=[seg],
        local=a.local,
        dstport=a.dstport,
        srcport=parse_srcport(a.srcport),
        ttl=a.ttl,
        tos=a.tos,
        df=a.df,
        dev=a.dev,
        strict=a.strict,
        offload=not a.no_offload,
        fast_path=not a.no_fast_path,
        busy_poll=a.busy_poll,
        send_thread=not a.no_send_thread,
        gro=not a.no_gro,
    ).validate()
    return cfg, a.control


async def run_vtep(
    cfg: VtepConfig, control: str | None, loop_name: str, verbose: bool = False
) -> int:
    vtep = Vtep(cfg)
    try:
        await vtep.start()
    except VtepError as exc:
        _err(str(exc))
        return 1
    path = control or default_path(cfg.segments[0].tap_name)
    server = ControlServer(vtep, path)
    try:
        await server.start()
    except ControlError as exc:
        await vtep.close()
        _err(str(exc))
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"{PROG}: {vtep.describe()}; control {path}; backend {fastpath.BACKEND}, loop {loop_name}",
        file=sys.stderr,
        flush=True,
    )

    async def log_events() -> None:
        async for ev in vtep.events():
            log.info("%s", ev.to_dict())

    logger = asyncio.ensure_future(log_events()) if verbose else None
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(vtep.wait_stopped())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    await server.close()
    await vtep.close()
    if logger is not None:
        logger.cancel()
    print(f"{PROG}: stats {json.dumps(vtep.stats(), sort_keys=True)}", file=sys.stderr, flush=True)
    if vtep.failure is not None:
        _err(str(vtep.failure))
        return 1
    return 0


# --- client commands ---------------------------------------------------------------------------


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


def fdb_line(r: dict[str, Any]) -> str:
    s = f"{r['mac']} dev {r['dev']} dst {r['dst']}"
    if r.get("port"):
        s += f" port {r['port']}"
    s += f" vni {r['vni']} self"
    return s + (" permanent" if r["permanent"] else f" age {r['age']:.0f}s")


def neigh_line(r: dict[str, Any]) -> str:
    return f"{r['ip']} dev {r['dev']} lladdr {r['lladdr']} {r['state']}"


def stats_text(st: dict[str, Any]) -> str:
    lines = []
    for vni, c in st["segments"].items():
        lines.append(
            f"vni {vni}: rx {c['rx_packets']} packets {c['rx_bytes']} bytes, "
            f"tx {c['tx_packets']} packets {c['tx_bytes']} bytes, dropped {c['dropped']}"
        )
        lines.append(
            f"  floods {c['floods']}  l2-misses {c['l2_misses']}  l3-misses {c['l3_misses']}  "
            f"arp-proxied {c['arp_proxied']}  learned {c['learned']}  moved {c['moved']}  "
            f"aged {c['aged']}  learn-refused {c['learn_refused']}"
        )
        if c["drops"]:
            lines.append("  drops: " + ", ".join(f"{k} {n}" for k, n in c["drops"].items()))
    un = st["unattributed"]["drops"]
    lines.append(
        "before a VNI was known: " + (", ".join(f"{k} {n}" for k, n in un.items()) or "no drops")
    )
    if st.get("socket_errors"):
        lines.append(
            "socket errors: " + ", ".join(f"{k} {n}" for k, n in st["socket_errors"].items())
        )
    lines.append(f"checksums completed: {st.get('checksums_completed', 0)}")
    return "\n".join(lines)


def event_line(ev: dict[str, Any]) -> str:
    return str(ev["event"]) + "".join(f" {k} {v}" for k, v in ev.items() if k != "event")


def cmd_client(a: argparse.Namespace) -> int:
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
    req: dict[str, Any] = {"cmd": a.command, "op": a.op, "vni": a.vni}
    if a.command == "fdb" and a.op != "show":
        if not a.args:
            raise UsageError(f"fdb {a.op} needs a MAC")
        kv = _kv(a.args[1:], ("dst", "port", "vni"))
        req["mac"] = a.args[0]
        req["dst"] = kv.get("dst")
        if "port" in kv:
            req["port"] = _to_int(kv["port"], "port")
        if "vni" in kv:
            req["remote_vni"] = _to_int(kv["vni"], "vni")
    elif a.command == "neigh" and a.op != "show":
        if not a.args:
            raise UsageError(f"neigh {a.op} needs an IP")
        req["ip"] = a.args[0]
        req["lladdr"] = _kv(a.args[1:], ("lladdr",)).get("lladdr")
    elif a.args:
        raise UsageError(f"{a.command} show takes no arguments")
    out = request(path, req)
    if a.op == "show":
        if a.json:
            print(json.dumps(out, indent=2))
        else:
            for row in out:
                print(fdb_line(row) if a.command == "fdb" else neigh_line(row))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    if bool(a.config) == bool(a.control):
        raise UsageError("export needs exactly one of --config FILE or --control PATH")
    if a.config:
        cfg, _ = load_config(a.config)
        d = dataclasses.asdict(cfg)
    else:
        d = request(a.control, {"cmd": "config"})
    print("\n".join(export_commands(d)))
    return 0


def _err(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(message)s", stream=sys.stderr)
    try:
        args = build_parser().parse_args(argv)
        if args.command == "run":
            cfg, control = config_from_args(args)
            loop_name = "asyncio" if args.no_uvloop else install_uvloop()
            return asyncio.run(run_vtep(cfg, control, loop_name, args.verbose))
        if args.command == "export":
            return cmd_export(args)
        if args.command == "lab":
            from .lab import main as lab_main

            return int(lab_main(args))
        return cmd_client(args)
    except (UsageError, ConfigError) as exc:
        _err(str(exc))
        return 2
    except ControlError as exc:
        _err(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
