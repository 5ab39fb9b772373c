"""``vxlanpy-tunnel lab``: a namespace lab, tested end to end (see :mod:`vxlanpy.lab`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..wire import VXLAN_PORT
from .common import UsageError, int_in, subcommand

__all__ = ["register"]


def register(sub: Any) -> None:
    lab = subcommand(sub, "lab", "build a namespace lab, test the overlay, tear it down", main)
    lab.add_argument(
        "--hosts",
        type=int,
        default=2,
        help="2 or 3 hosts; with --control-plane etcd, 2..20",
    )
    lab.add_argument(
        "--control-plane",
        choices=("static", "etcd"),
        default="static",
        help="static: VTEPs configured by hand (default); etcd: a flannel network on etcd",
    )
    lab.add_argument("--peer", choices=("kernel", "vxlanpy"), default="kernel")
    lab.add_argument("--vni", type=int_in("VNI", 0, 0xFFFFFF), default=120)
    lab.add_argument("--dstport", type=int_in("dstport", 1, 65535), default=VXLAN_PORT)
    lab.add_argument("--seconds", type=float, default=3.0, help="TCP test duration")
    lab.add_argument("--keep", action="store_true", help="leave the lab up")
    lab.add_argument("--stop", metavar="TAG", help="tear down a lab left up with --keep")


def main(a: argparse.Namespace) -> int:
    from ..lab import main as lab_main  # the lab's imports are only needed for the lab

    if a.control_plane == "etcd" and not 2 <= a.hosts <= 20:
        raise UsageError(f"argument --hosts: with --control-plane etcd, 2..20, got {a.hosts}")
    if a.control_plane == "static" and a.hosts not in (2, 3):
        raise UsageError(f"argument --hosts: invalid choice: {a.hosts} (choose from 2, 3)")
    return int(lab_main(a))
