"""Choosing this node's subnet, and ``subnet.env``: flannel's ``LocalManager`` rules.

``choose_subnet`` and ``subnet_env`` are pure; only the two file helpers at the end do I/O.

``choose_subnet`` follows ``tryAcquireLease`` and ``allocateSubnet`` (pkg/subnet/etcd):
1. a lease that already carries this node's PublicIP is reused (if the config still allows it);
2. else the subnet of the previous run (read from ``subnet.env``) if nobody holds it;
3. else one at random among the first 100 free subnets from SubnetMin to SubnetMax.
The caller then creates the key in a transaction that fails if it exists, and retries on a race.
"""

from __future__ import annotations

import ipaddress
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass

from .lease import Lease, NetworkConfig

__all__ = [
    "Choice",
    "OutOfSubnets",
    "choose_subnet",
    "subnet_env",
    "parse_subnet_env",
    "read_previous_subnet",
    "write_subnet_env",
]

CANDIDATES = 100  # flannel picks at random among the first 100 free subnets


class OutOfSubnets(Exception):
    """Every subnet from SubnetMin to SubnetMax is leased."""


@dataclass(frozen=True)
class Choice:
    subnet: ipaddress.IPv4Network
    reuse: Lease | None = None  # the existing lease with our PublicIP (update, not create)
    stale: Lease | None = None  # a lease with our PublicIP the config no longer allows: delete


def choose_subnet(
    config: NetworkConfig,
    leases: Iterable[Lease],
    public_ip: ipaddress.IPv4Address,
    previous: ipaddress.IPv4Network | None = None,
    rng: random.Random | None = None,
) -> Choice:
    """The subnet to lease (see the module docstring); OutOfSubnets if none is free."""
    held = list(leases)
    stale = None
    for lease in held:
        if lease.public_ip == public_ip:
            if config.contains(lease.subnet):
                return Choice(lease.subnet, reuse=lease)
            stale = lease
            break
    taken = [lease.subnet for lease in held if lease is not stale]
    if previous is not None and config.contains(previous):
        if not any(previous.overlaps(s) for s in taken):
            return Choice(previous, stale=stale)
    size = 1 << (32 - config.subnet_len)
    free: list[ipaddress.IPv4Network] = []
    addr = int(config.subnet_min)
    while addr <= int(config.subnet_max) and len(free) < CANDIDATES:
        sn = ipaddress.IPv4Network((addr, config.subnet_len))
        if not any(sn.overlaps(s) for s in taken):
            free.append(sn)
        addr += size
    if not free:
        raise OutOfSubnets(
            f"out of subnets: every /{config.subnet_len} from {config.subnet_min} to "
            f"{config.subnet_max} is leased"
        )
    return Choice((rng or random.Random()).choice(free), stale=stale)


def subnet_env(
    config: NetworkConfig, subnet: ipaddress.IPv4Network, mtu: int, ipmasq: bool = False
) -> str:
    """The contents flanneld writes to ``/run/flannel/subnet.env`` (``WriteSubnetFile``):
    FLANNEL_SUBNET is the subnet's first usable address with the subnet's prefix length."""
    first = subnet.network_address + 1
    return (
        f"FLANNEL_NETWORK={config.network}\n"
        f"FLANNEL_SUBNET={first}/{subnet.prefixlen}\n"
        f"FLANNEL_MTU={mtu}\n"
        f"FLANNEL_IPMASQ={'true' if ipmasq else 'false'}\n"
    )


def parse_subnet_env(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key:
            out[key] = value
    return out


def read_previous_subnet(path: str) -> ipaddress.IPv4Network | None:
    """The subnet a previous run wrote to ``path`` (as flanneld's ``ReadCIDRFromSubnetFile``);
    None if the file is missing or unreadable."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    value = parse_subnet_env(text).get("FLANNEL_SUBNET")
    if not value:
        return None
    try:
        return ipaddress.IPv4Network(value, strict=False)
    except ValueError:
        return None


def write_subnet_env(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file renamed over it)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
