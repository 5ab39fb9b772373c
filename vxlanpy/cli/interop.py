"""The ``run`` flags that say what the peers expect: ``--profile``, the UDP checksum policy in
iproute2's words (``--udpcsum``/``--noudpcsum``, ``--[no]udp6zerocsumtx``,
``--[no]udp6zerocsumrx``) and ``--no-peer-watch``. A flag given wins over the profile."""

from __future__ import annotations

import argparse
from typing import Any

from ..profiles import PROFILES, Profile, profile

__all__ = ["register", "profile_of", "settings"]


def register(run: Any) -> None:
    run.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        help="defaults for what this kind of peer expects (dstport, srcport, strict, UDP "
        "checksums, DF); flags given win",
    )
    for name, what, opposite in (
        ("udpcsum", "IPv4: send outer UDP checksums (the default)", "IPv4: send them as zero"),
        ("udp6zerocsumtx", "IPv6: send zero outer UDP checksums", "IPv6: compute them (default)"),
        ("udp6zerocsumrx", "IPv6: accept zero outer UDP checksums", "IPv6: drop them (default)"),
    ):
        g = run.add_mutually_exclusive_group()
        g.add_argument(f"--{name}", dest=name, action="store_const", const=True, help=what)
        g.add_argument(f"--no{name}", dest=name, action="store_const", const=False, help=opposite)
    run.add_argument(
        "--no-peer-watch",
        action="store_true",
        help="no warning when a peer's packets show it expects other settings",
    )


def profile_of(a: argparse.Namespace) -> Profile:
    return profile(a.profile)


def settings(a: argparse.Namespace, prof: Profile) -> dict[str, Any]:
    """The VtepConfig fields these flags set (the profile's where a flag is not given)."""
    out: dict[str, Any] = {"profile": a.profile, "peer_watch": not a.no_peer_watch}
    for name in ("udpcsum", "udp6zerocsumtx", "udp6zerocsumrx"):
        v = getattr(a, name)
        out[name] = getattr(prof, name) if v is None else v
    return out
