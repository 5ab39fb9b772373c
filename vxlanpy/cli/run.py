"""``vxlanpy-tunnel run``: a VTEP from flags or a config file, until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

from .. import kernels, metrics, privdrop
from ..config import (
    ADAPTIVE_POLL_US,
    TAP_QUEUE,
    TAP_QUEUE_MAX,
    ConfigError,
    SegmentSpec,
    VtepConfig,
    load_config,
    parse_listen,
    parse_srcport,
)
from ..control import ControlError, ControlServer, default_path
from ..events import Event
from ..fdb import DEFAULT_LEARN_RATE, DEFAULT_MAX_LEARNED
from ..tunnel import Vtep, VtepError, install_uvloop
from ..wire import VXLAN_PORT, VXLAN_PORT_LINUX
from . import interop
from .common import PROG, UsageError, err, int_in, pair, subcommand

__all__ = ["register", "config_from_args", "run_vtep"]

log = logging.getLogger("vxlanpy")


def register(sub: Any) -> None:
    run = subcommand(sub, "run", "run a VTEP until SIGINT/SIGTERM", main)
    run.add_argument("--config", help="TOML config file (instead of the flags below)")
    run.add_argument(
        "--control",
        help="control socket path (default /run/vxlanpy/<tap>.sock, or "
        "/run/vxlanpy/netns-NAME/<tap>.sock inside the network namespace NAME)",
    )
    run.add_argument("--vni", type=int_in("VNI", 0, 0xFFFFFF), help="VXLAN network identifier")
    run.add_argument("--local", help="local underlay IP (source of outer packets)")
    run.add_argument("--remote", action="append", default=[], help="remote VTEP (repeatable)")
    run.add_argument("--group", help="multicast group for BUM traffic (with --dev)")
    run.add_argument("--dev", help="underlay device (multicast, MTU)")
    run.add_argument(
        "--dstport",
        type=int_in("dstport", 1, 65535),
        help=f"UDP port ({VXLAN_PORT} IANA, the default; {VXLAN_PORT_LINUX} Linux/flannel)",
    )
    run.add_argument("--tap", help="TAP device name (default vxlan<VNI>)")
    run.add_argument("--address", help="overlay address for the TAP, CIDR")
    run.add_argument("--mtu", type=int, help="TAP MTU (default underlay MTU - 50/70)")
    run.add_argument("--bridge", help="enslave the TAP to this Linux bridge")
    run.add_argument("--mac", help="MAC address for the TAP")
    run.add_argument("--no-learning", action="store_true", help="do not learn remote MACs")
    run.add_argument("--ageing", type=float, default=300.0, help="FDB ageing, s (0 = never)")
    run.add_argument("--max-address", type=int, default=0, help="FDB size limit (0 = none)")
    run.add_argument(
        "--max-learned",
        type=int,
        default=DEFAULT_MAX_LEARNED,
        help=f"learned MACs at most (default {DEFAULT_MAX_LEARNED}; 0 = no limit)",
    )
    run.add_argument(
        "--learn-rate",
        type=float,
        default=DEFAULT_LEARN_RATE,
        help=f"new MACs a second per remote VTEP (default {DEFAULT_LEARN_RATE:g}; 0 = no limit)",
    )
    run.add_argument(
        "--allow",
        action="append",
        metavar="CIDR|configured",
        help="accept VXLAN only from these VTEPs (repeatable; 'configured': the remotes and "
        "static FDB entries given); default: from any",
    )
    run.add_argument(
        "--proxy", action="store_true", help="answer ARP and IPv6 ND from the neighbour table"
    )
    run.add_argument(
        "--fdb",
        action="append",
        default=[],
        type=pair("MAC=IP"),
        help="static FDB entry MAC=IP (00:00:00:00:00:00=IP appends to the flood list)",
    )
    run.add_argument("--neigh", action="append", default=[], type=pair("IP=MAC"), help="IP=MAC")
    run.add_argument("--srcport", help="source port range MIN:MAX (default 49152:65535)")
    run.add_argument(
        "--ttl",
        type=int_in("--ttl", 1, 255, ("inherit", "auto")),
        help="outer TTL / hop limit: 1..255, 'inherit' (the inner packet's) or 'auto' (the "
        "system's default, the default)",
    )
    run.add_argument(
        "--tos",
        type=int_in("--tos", 0, 255, ("inherit",)),
        help="outer TOS / traffic class: 0..255 or 'inherit' (the inner packet's); the ECN "
        "field is always the inner one's (default 0)",
    )
    run.add_argument(
        "--df",
        choices=("unset", "set", "inherit"),
        help="outer DF bit: unset (the default), set, or inherit (the inner IPv4 packet's; "
        "IPv6: set)",
    )
    run.add_argument(
        "--strict",
        action="store_const",
        const=True,
        help="drop packets with reserved bits set",
    )
    interop.register(run)
    run.add_argument("--allow-vlan", action="store_true", help="carry 802.1Q-tagged frames")
    run.add_argument(
        "--gbp",
        action="store_true",
        help="VXLAN-GBP (group based policy, the kernel's gbp): send and read group policy IDs",
    )
    run.add_argument(
        "--gbp-group",
        metavar="ID[/D][/A]",
        help="with --gbp: the group policy ID frames leave with (0..65535; /D: don't learn, /A: "
        "policy applied)",
    )
    run.add_argument(
        "--gbp-mac",
        action="append",
        default=[],
        type=pair("MAC=ID[/D][/A]"),
        help="with --gbp: the group policy of frames from this source MAC (repeatable)",
    )
    run.add_argument("--no-uvloop", action="store_true", help="use the plain asyncio loop")
    run.add_argument(
        "--no-offload", action="store_true", help="no TAP checksum/TSO offloads (IFF_VNET_HDR)"
    )
    run.add_argument(
        "--no-fast-path",
        action="store_true",
        help="no C datapath: the Python engine handles every frame (slower)",
    )
    run.add_argument(
        "--tunnel-gso",
        nargs="?",
        const="on",
        default="auto",
        choices=("auto", "on", "off"),
        help="hand TCP super-frames to the kernel whole as UDP-tunnel GSO packets (Linux 6.17+, "
        "IPv4 underlay; they skip the host's routing and netfilter, so 'auto', the default, "
        "does it only while no nftables output or postrouting rule, iptables-legacy table or "
        "xfrm policy is there to skip; "
        "'on' (the flag alone) always, 'off' never: see docs/reference.md)",
    )
    run.add_argument(
        "--no-send-thread",
        action="store_true",
        help="send TCP super-frames from the event loop's thread instead of a C sender "
        "thread (one core instead of two)",
    )
    run.add_argument(
        "--no-datapath-thread",
        action="store_true",
        help="poll the TAPs and the socket from the event loop instead of a C datapath thread "
        "(higher latency after idle)",
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
    run.add_argument(
        "--adaptive-poll",
        type=int,
        default=ADAPTIVE_POLL_US,
        metavar="USEC",
        help="while packets come less than USEC microseconds apart, the datapath thread polls "
        f"that long for the next one before sleeping (default {ADAPTIVE_POLL_US}; 0 = off)",
    )
    run.add_argument(
        "--tap-queue",
        type=int,
        default=TAP_QUEUE,
        metavar="FRAMES",
        help="frames each TAP queues until the datapath reads them (its txqueuelen; "
        f"default {TAP_QUEUE}, 16..{TAP_QUEUE_MAX}; beyond it the TAP drops: tap_queue in stats)",
    )
    run.add_argument(
        "--user",
        metavar="USER[:GROUP]",
        help="once the TAPs and sockets are open, switch to this user and group (names or "
        "ids; default group: the user's), keeping only the capabilities still needed",
    )
    run.add_argument(
        "--metrics",
        metavar="ADDR:PORT",
        help="serve Prometheus metrics on http://ADDR:PORT/metrics (needs prometheus_client: "
        "pip install 'vxlanpy[metrics]')",
    )
    run.add_argument(
        "--capture",
        metavar="FILE",
        help="write a pcapng capture of every packet and its decision to FILE from the start "
        "(inner frames and outer datagrams, a comment each; see `vxlanpy-tunnel capture`)",
    )
    run.add_argument(
        "--capture-drops", action="store_true", help="with --capture: the dropped packets only"
    )
    run.add_argument("-v", "--verbose", action="store_true", help="log every event")


# run flags that --config replaces (the others: --config, --control, --no-uvloop, --verbose,
# --user and the --no-* switches of SWITCHES, apply to both forms)
# --no-* flags of VtepConfig fields
SWITCHES = ("offload", "fast_path", "send_thread", "datapath_thread", "gro")
_NOT_CONFIG = {"command", "func", "config", "control", "no_uvloop", "verbose", "user"} | {
    "no_" + key for key in SWITCHES
}
_RUN_DEFAULTS: dict[str, object] = {}
# run flags that are SegmentSpec / VtepConfig fields of the same name, taken as they are
_SEGMENT_FLAGS = (
    "vni tap address mtu bridge mac group ageing max_learned learn_rate allow proxy allow_vlan gbp "
    "gbp_group"
).split()
_VTEP_FLAGS = (
    "local ttl tos dev busy_poll adaptive_poll tap_queue tunnel_gso capture capture_drops metrics"
).split()


def _config_flags(a: argparse.Namespace) -> list[str]:
    if not _RUN_DEFAULTS:
        from . import build_parser

        d = build_parser().parse_args(["run", "--vni", "0"])
        _RUN_DEFAULTS.update(vars(d))
        _RUN_DEFAULTS["vni"] = None
    return [f for f in vars(a) if f not in _NOT_CONFIG]


def _user_group(text: str | None) -> tuple[str | None, str | None]:
    """``USER[:GROUP]`` -> (USER, GROUP or None)."""
    if text is None:
        return None, None
    user, _, group = text.partition(":")
    if not user:
        raise UsageError(f"--user must be USER[:GROUP], got {text!r}")
    return user, group or None


def config_from_args(a: argparse.Namespace) -> tuple[VtepConfig, str | None]:
    """The VTEP configuration the ``run`` flags (or ``--config FILE``) describe, and the
    control-socket path to use (None: the default). Raises ConfigError or UsageError."""
    if a.config:
        given = [f for f in _config_flags(a) if getattr(a, f) != _RUN_DEFAULTS[f]]
        if given:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            raise ConfigError(f"{flags}: put it in the config file (--config takes no VTEP flags)")
        cfg, control = load_config(a.config)
        for key in SWITCHES:  # --no-KEY turns off what the file may have on
            if getattr(a, "no_" + key):
                setattr(cfg, key, False)
        if a.user is not None:  # --user overrides the file's user and group
            cfg.user, cfg.run_group = _user_group(a.user)
            cfg.validate()
        return cfg, a.control or control
    if a.vni is None:
        raise UsageError("run needs --vni (or --config FILE)")
    user, run_group = _user_group(a.user)
    seg = SegmentSpec(
        **{key: getattr(a, key) for key in _SEGMENT_FLAGS},
        remotes=list(a.remote),
        learning=not a.no_learning,
        max_addresses=a.max_address,
        gbp_mac=list(a.gbp_mac),
        fdb=list(a.fdb),
        neigh=list(a.neigh),
    )
    prof = interop.profile_of(a)
    switches: dict[str, Any] = {key: not getattr(a, "no_" + key) for key in SWITCHES}
    cfg = VtepConfig(
        **{key: getattr(a, key) for key in _VTEP_FLAGS},
        **switches,
        segments=[seg],
        dstport=a.dstport if a.dstport is not None else prof.dstport,
        srcport=parse_srcport(a.srcport) if a.srcport is not None else prof.srcport,
        df=a.df if a.df is not None else prof.df,
        strict=a.strict if a.strict is not None else prof.strict,
        user=user,
        run_group=run_group,
        **interop.settings(a, prof),
    ).validate()
    return cfg, a.control


async def run_vtep(
    cfg: VtepConfig, control: str | None, loop_name: str, verbose: bool = False
) -> int:
    """Run a VTEP and its control socket until SIGINT/SIGTERM or a failure; the exit code."""
    vtep = Vtep(cfg)
    stream = vtep.events() if verbose else None  # before start: its first events are logged too
    try:
        if cfg.metrics is not None:
            metrics.require()
        await vtep.start()
    except (VtepError, metrics.MetricsError) as exc:
        err(str(exc))
        return 1
    path = control or default_path(cfg.segments[0].tap_name)
    server = ControlServer(vtep, path)
    scrape = None
    try:
        await server.start()
        if cfg.metrics is not None:
            scrape = metrics.MetricsServer(vtep, *parse_listen(cfg.metrics))
            await scrape.start()
    except (ControlError, metrics.MetricsError) as exc:
        await server.close()
        await vtep.close()
        err(str(exc))
        return 1
    if cfg.user is not None:
        try:
            dropped = _drop_privileges(cfg, vtep, server)
        except (privdrop.PrivilegeError, OSError) as exc:
            await server.close()
            await vtep.close()
            err(str(exc))
            return 1
        print(f"{PROG}: {dropped}", file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    served = f"; metrics {scrape.url}" if scrape is not None else ""
    print(
        f"{PROG}: {vtep.describe()}; control {path}{served}; backend {kernels.BACKEND}, loop "
        f"{loop_name}",
        file=sys.stderr,
        flush=True,
    )

    async def log_events(events: AsyncIterator[Event]) -> None:
        async for ev in events:
            log.info("%s", ev.to_dict())

    logger = asyncio.ensure_future(log_events(stream)) if stream is not None else None
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(vtep.wait_stopped())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    if scrape is not None:
        await scrape.close()
    await server.close()
    await vtep.close()
    if logger is not None:
        logger.cancel()
    print(f"{PROG}: stats {json.dumps(vtep.stats(), sort_keys=True)}", file=sys.stderr, flush=True)
    if vtep.failure is not None:
        err(str(vtep.failure))
        return 1
    return 0


def _drop_privileges(cfg: VtepConfig, vtep: Vtep, server: ControlServer) -> str:
    """Switch to cfg.user/cfg.group keeping what is still needed; a line saying what it did."""
    assert cfg.user is not None and vtep.transport is not None
    who = privdrop.resolve(cfg.user, cfg.run_group)
    keep = privdrop.needed_capabilities(vtep.transport.sndbuf, cfg.srcport[0])
    server.hand_over(who.uid, who.gid)
    privdrop.drop(who, keep)
    return (
        f"running as user {who.name} (uid {who.uid}, gid {who.gid}); capabilities kept: "
        f"{privdrop.cap_names(keep)}"
    )


def main(a: argparse.Namespace) -> int:
    cfg, control = config_from_args(a)
    loop_name = "asyncio" if a.no_uvloop else install_uvloop()
    return asyncio.run(run_vtep(cfg, control, loop_name, a.verbose))
