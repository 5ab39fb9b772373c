"""``vxlanpy-tunnel``: run a userspace VTEP from the command line (iproute2 vocabulary).

Exit codes: 0 clean stop (SIGINT/SIGTERM), 1 runtime error (privileges, TAP name taken, port in
use, TAP vanished), 2 bad command line or configuration. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import fastpath
from .config import ConfigError, SegmentSpec, VtepConfig, parse_srcport
from .tunnel import Vtep, VtepError, install_uvloop
from .wire import VXLAN_PORT, VXLAN_PORT_LINUX

PROG = "vxlanpy-tunnel"
log = logging.getLogger("vxlanpy")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) that the caller turns into exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _pair(sep: str, what: str):  # type: ignore[no-untyped-def]
    def parse(text: str) -> tuple[str, str]:
        left, s, right = text.partition(sep)
        if not s or not left or not right:
            raise argparse.ArgumentTypeError(f"{what} must look like {sep.join(what.split('='))}")
        return left, right

    return parse


def _vni(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"VNI must be an integer, got {text!r}") from None
    if not 0 <= v <= 0xFFFFFF:
        raise argparse.ArgumentTypeError(f"VNI must be in 0..16777215, got {v}")
    return v


def _dstport(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"dstport must be a port number, got {text!r}") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"dstport must be in 1..65535, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Userspace VXLAN tunnel endpoint (RFC 7348).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run a VTEP until SIGINT/SIGTERM")
    run.add_argument("--vni", type=_vni, required=True, help="VXLAN network identifier")
    run.add_argument("--local", help="local underlay IP (source of outer packets)")
    run.add_argument("--remote", action="append", default=[], help="remote VTEP (repeatable)")
    run.add_argument("--group", help="multicast group for BUM traffic (with --dev)")
    run.add_argument("--dev", help="underlay device (multicast, MTU)")
    run.add_argument(
        "--dstport",
        type=_dstport,
        default=VXLAN_PORT,
        help=f"UDP port ({VXLAN_PORT} IANA, {VXLAN_PORT_LINUX} Linux/flannel)",
    )
    run.add_argument("--tap", help="TAP device name (default vxlan<VNI>)")
    run.add_argument("--address", help="overlay address for the TAP, CIDR")
    run.add_argument("--mtu", type=int, help="TAP MTU (default underlay MTU - 50/70)")
    run.add_argument("--bridge", help="enslave the TAP to this Linux bridge")
    run.add_argument("--no-learning", action="store_true", help="do not learn remote MACs")
    run.add_argument("--ageing", type=float, default=300.0, help="FDB ageing, s (0 = never)")
    run.add_argument("--max-address", type=int, default=0, help="FDB size limit (0 = none)")
    run.add_argument("--proxy", action="store_true", help="answer ARP from the neighbour table")
    run.add_argument(
        "--fdb",
        action="append",
        default=[],
        type=_pair("=", "MAC=IP"),
        help="static FDB entry MAC=IP (00:00:00:00:00:00=IP appends to the flood list)",
    )
    run.add_argument(
        "--neigh", action="append", default=[], type=_pair("=", "IP=MAC"), help="IP=MAC"
    )
    run.add_argument("--srcport", default="49152:65535", help="source port range MIN:MAX")
    run.add_argument("--ttl", type=int, help="outer TTL / hop limit")
    run.add_argument("--tos", type=int, help="outer TOS / traffic class")
    run.add_argument("--df", choices=("unset", "set"), default="unset", help="outer DF bit")
    run.add_argument("--strict", action="store_true", help="drop packets with reserved bits set")
    run.add_argument("--allow-vlan", action="store_true", help="carry 802.1Q-tagged frames")
    run.add_argument("--no-uvloop", action="store_true", help="use the plain asyncio loop")
    run.add_argument("-v", "--verbose", action="store_true", help="log every event")
    return p


def config_from_args(a: argparse.Namespace) -> VtepConfig:
    seg = SegmentSpec(
        vni=a.vni,
        tap=a.tap,
        address=a.address,
        mtu=a.mtu,
        bridge=a.bridge,
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
    return VtepConfig(
        segments=[seg],
        local=a.local,
        dstport=a.dstport,
        srcport=parse_srcport(a.srcport),
        ttl=a.ttl,
        tos=a.tos,
        df=a.df,
        dev=a.dev,
        strict=a.strict,
    ).validate()


async def run_vtep(cfg: VtepConfig, loop_name: str, verbose: bool = False) -> int:
    vtep = Vtep(cfg)
    try:
        await vtep.start()
    except VtepError as exc:
        _err(str(exc))
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"{PROG}: {vtep.describe()}; backend {fastpath.BACKEND}, loop {loop_name}",
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
    await vtep.close()
    if logger is not None:
        logger.cancel()
    if vtep.failure is not None:
        _err(str(vtep.failure))
        return 1
    return 0


def _err(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(message)s", stream=sys.stderr)
    try:
        args = build_parser().parse_args(argv)
        if args.command == "run":
            cfg = config_from_args(args)
            loop_name = "asyncio" if args.no_uvloop else install_uvloop()
            return asyncio.run(run_vtep(cfg, loop_name, args.verbose))
    except (UsageError, ConfigError) as exc:
        _err(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
