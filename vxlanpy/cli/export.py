"""``vxlanpy-tunnel export``: the equivalent kernel (iproute2) configuration."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..config import load_config
from ..control import request
from ..export import export_commands
from .common import UsageError, subcommand

__all__ = ["register"]


def register(sub: Any) -> None:
    ex = subcommand(sub, "export", "print the equivalent kernel (iproute2) configuration", main)
    ex.add_argument("--config", help="TOML config file")
    ex.add_argument("--control", help="control socket of a running VTEP")


def main(a: argparse.Namespace) -> int:
    if bool(a.config) == bool(a.control):
        raise UsageError("export needs exactly one of --config FILE or --control PATH")
    if a.config:
        cfg, _ = load_config(a.config)
        d = dataclasses.asdict(cfg)
    else:
        d = request(a.control, {"cmd": "config"})
    print("\n".join(export_commands(d)))
    return 0
