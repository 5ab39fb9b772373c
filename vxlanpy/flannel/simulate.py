"""Simulated flannel nodes: leases written straight into etcd, as flanneld would write them.

For tests and benchmarks (no device behind them). ``python -m vxlanpy.flannel.simulate
--etcd-endpoints URL put N [--first K]`` writes N leases bound to one etcd lease; ``delete N``
removes them. Node ``i`` (from 0) has the (i+1)-th subnet of ``--network`` (default
198.19.128.0/17 in /28s: room for 2047 nodes), PublicIP ``198.18.<100 + i // 250>.<i % 250 + 1>``
and VtepMAC ``02:5a:`` + (i + 1) in four bytes. Nothing answers at those addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time
from collections.abc import Sequence

from .etcd import EtcdClient, parse_endpoints
from .lease import DEFAULT_PREFIX, Lease, subnet_key

__all__ = ["simulated_lease", "put_leases", "delete_leases"]


def simulated_lease(i: int, network: str = "198.19.128.0/17", subnet_len: int = 28) -> Lease:
    """The lease of simulated node ``i`` (0-based): the (i+1)-th subnet of ``network``."""
    net = ipaddress.IPv4Network(network)
    size = 1 << (32 - subnet_len)
    subnet = ipaddress.IPv4Network((int(net.network_address) + (i + 1) * size, subnet_len))
    if not subnet.subnet_of(net):
        raise ValueError(f"node {i}: {network} holds fewer /{subnet_len} subnets")
    public = ipaddress.IPv4Address(f"198.18.{100 + i // 250}.{i % 250 + 1}")
    mac = "02:5a:" + ":".join(f"{b:02x}" for b in (i + 1).to_bytes(4, "big"))
    return Lease(subnet, public, mac)


async def _each(
    endpoints: str, leases: Sequence[Lease], prefix: str, ttl: int | None
) -> tuple[float, float]:
    client = EtcdClient(parse_endpoints(endpoints), timeout=10)
    try:
        lease_id = await client.grant(ttl) if ttl else 0
        sem = asyncio.Semaphore(64)

        async def one(lease: Lease) -> None:
            key = f"{prefix}/subnets/{subnet_key(lease.subnet)}"
            async with sem:
                if ttl:
                    await client.put(key, lease.encode(), lease_id)
                else:
                    await client.delete(key)

        t0 = time.monotonic()
        await asyncio.gather(*(one(lease) for lease in leases))
        return t0, time.monotonic() - t0
    finally:
        await client.close()


async def put_leases(
    endpoints: str, leases: Sequence[Lease], prefix: str = DEFAULT_PREFIX, ttl: int = 86400
) -> tuple[float, float]:
    """Write ``leases`` (bound to one etcd lease of ``ttl``) with up to 64 requests in flight.
    Returns when the first write started (``time.monotonic()``) and the seconds it took."""
    return await _each(endpoints, leases, prefix, ttl)


async def delete_leases(
    endpoints: str, leases: Sequence[Lease], prefix: str = DEFAULT_PREFIX
) -> tuple[float, float]:
    """Delete the keys of ``leases``, as ``put_leases``."""
    return await _each(endpoints, leases, prefix, None)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vxlanpy.flannel.simulate")
    p.add_argument("--etcd-endpoints", required=True)
    p.add_argument("--etcd-prefix", default=DEFAULT_PREFIX)
    p.add_argument("--network", default="198.19.128.0/17")
    p.add_argument("--subnet-len", type=int, default=28)
    p.add_argument("op", choices=("put", "delete"))
    p.add_argument("count", type=int)
    p.add_argument("--first", type=int, default=0)
    a = p.parse_args(argv)
    leases = [simulated_lease(a.first + i, a.network, a.subnet_len) for i in range(a.count)]
    if a.op == "put":
        start, took = asyncio.run(put_leases(a.etcd_endpoints, leases, a.etcd_prefix))
    else:
        start, took = asyncio.run(delete_leases(a.etcd_endpoints, leases, a.etcd_prefix))
    # CLOCK_MONOTONIC is the same in every network namespace: a caller can compare it
    print(json.dumps({"op": a.op, "leases": len(leases), "start": start, "seconds": took}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
