"""``vxlanpy-tunnel``: run and operate userspace VTEPs, in iproute2's vocabulary.

    vxlanpy-tunnel run --vni 42 --local IP --remote IP ...   |  run --config FILE
    vxlanpy-tunnel fdb show | add|append|replace MAC dst IP [port N] [vni N] | del MAC [dst IP]
    vxlanpy-tunnel neigh show | add|replace IP lladdr MAC | del IP
    vxlanpy-tunnel stats | events | export (--config FILE | --control PATH)
    vxlanpy-tunnel top [--interval S] [--count N] [--json]
    vxlanpy-tunnel trace FRAME... --vni N [-c FILE] | trace --live | capture -w FILE
    vxlanpy-tunnel lab [--hosts 2|3] [--peer kernel|vxlanpy] [--keep]
    vxlanpy-tunnel flannel --etcd-endpoints URL[,URL...] [--iface IF | --public-ip IP] ...

Exit codes: 0 success, 1 runtime error (privileges, TAP name taken, port in use, TAP vanished,
VTEP unreachable, request refused), 2 bad command line or configuration. Errors are one line.

One module per subcommand (group): each has ``register(sub)``, which adds its parser and sets
``func``, the function that runs it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..config import ConfigError
from ..control import ControlError
from . import client, export, flannel, lab, run, top, trace
from .common import PROG, Parser, UsageError, err
from .run import config_from_args

__all__ = ["main", "build_parser", "config_from_args", "PROG"]

_COMMANDS = (run, client, top, trace, export, lab, flannel)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Userspace VXLAN tunnel endpoint (RFC 7348).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for mod in _COMMANDS:
        mod.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(message)s", stream=sys.stderr)
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except (UsageError, ConfigError) as exc:
        err(str(exc))
        return 2
    except ControlError as exc:
        err(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
