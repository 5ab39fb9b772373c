"""``vxlanpy-tunnel flannel``: a flannel node on etcd (see :mod:`vxlanpy.flannel`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from .common import PROG, UsageError, err, subcommand

__all__ = ["register", "agent_config"]

log = logging.getLogger("vxlanpy")

DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"
_FLAGS = (  # (flag, dest, default): those --config replaces
    ("--etcd-endpoints", "etcd_endpoints", None),
    ("--etcd-prefix", "etcd_prefix", None),
    ("--iface", "iface", None),
    ("--public-ip", "public_ip", None),
    ("--backend", "backend", None),
    ("--subnet-file", "subnet_file", None),
    ("--lease-ttl", "lease_ttl", None),
    ("--renew-margin", "renew_margin", None),
    ("--release-on-exit", "release_on_exit", False),
    ("--connect-timeout", "connect_timeout", None),
)


def register(sub: Any) -> None:
    p = subcommand(sub, "flannel", "run a flannel node (etcd control plane) until SIGTERM", main)
    p.add_argument("--config", help="TOML file with a [flannel] table (instead of the flags)")
    p.add_argument(
        "--etcd-endpoints",
        metavar="URL[,URL...]",
        help=f"etcd members, comma-separated (default {DEFAULT_ENDPOINTS})",
    )
    p.add_argument("--etcd-prefix", help="key prefix (default /coreos.com/network)")
    p.add_argument("--iface", help="interface (name or address) for flannel traffic")
    p.add_argument("--public-ip", help="PublicIP to advertise (default: the interface's)")
    p.add_argument(
        "--backend",
        choices=("vxlanpy", "kernel"),
        help="dataplane: a vxlanpy VTEP (default) or a kernel vxlan device",
    )
    p.add_argument("--subnet-file", help="where to write subnet.env (/run/flannel/subnet.env)")
    p.add_argument("--lease-ttl", type=int, help="etcd lease TTL, seconds (default 86400)")
    p.add_argument(
        "--renew-margin", type=int, help="renew this many seconds before expiry (default 3600)"
    )
    p.add_argument(
        "--release-on-exit",
        action="store_true",
        help="revoke the lease on exit: the node leaves (flanneld keeps it for a restart)",
    )
    p.add_argument(
        "--connect-timeout", type=float, help="at start, give up on etcd after S seconds (10)"
    )
    p.add_argument("--control", help="vxlanpy dataplane: control socket path")
    p.add_argument("--no-uvloop", action="store_true", help="use the plain asyncio loop")
    p.add_argument("-v", "--verbose", action="store_true", help="log the VTEP's events")


def agent_config(a: argparse.Namespace) -> Any:
    """The AgentConfig the flags (or ``--config FILE``) describe; raises ConfigError or
    UsageError."""
    from ..flannel.config import AgentConfig, endpoints, load_agent_config

    if a.config:
        given = [flag for flag, dest, default in _FLAGS if getattr(a, dest) != default]
        if given:
            raise UsageError(f"{', '.join(given)}: put it in the config file (with --config)")
        cfg = load_agent_config(a.config)
        if a.control:
            cfg.control = a.control
        return cfg
    kw: dict[str, Any] = {
        dest: getattr(a, dest)
        for _flag, dest, _default in _FLAGS[1:]
        if getattr(a, dest) is not None
    }
    cfg = AgentConfig(etcd_endpoints=endpoints(a.etcd_endpoints or DEFAULT_ENDPOINTS), **kw)
    cfg.control = a.control
    return cfg.validate()


async def run_agent(cfg: Any, verbose: bool = False) -> int:
    """Run the agent until SIGINT/SIGTERM; the exit code."""
    from ..flannel.agent import AgentError, FlannelAgent

    agent = FlannelAgent(cfg)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await agent.start()
    except AgentError as exc:
        err(str(exc))
        return exc.code
    print(f"{PROG}: {agent.describe()}", file=sys.stderr, flush=True)
    logger = None
    vtep = getattr(agent.dataplane, "vtep", None)
    if verbose and vtep is not None:

        async def log_events() -> None:
            async for ev in vtep.events():
                log.info("%s", ev.to_dict())

        logger = asyncio.ensure_future(log_events())
    code = 0
    try:
        await agent.run(stop)
    except AgentError as exc:
        err(str(exc))
        code = exc.code
    finally:
        if logger is not None:
            logger.cancel()
        peers = len(agent.peers)
        await agent.close()
        log.info("flannel: stopped; %d peers removed with %s", peers, cfg.backend)
    return code


def main(a: argparse.Namespace) -> int:
    from ..tunnel import install_uvloop

    cfg = agent_config(a)
    if not a.no_uvloop:
        install_uvloop()
    return asyncio.run(run_agent(cfg, a.verbose))
