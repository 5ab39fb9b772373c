"""The leases of the network and what this node must program for them: sans-I/O.

``LeaseTable`` mirrors ``<prefix>/subnets/``: a snapshot (``reset``) or watch events (``put``,
``delete``) go in; ``desired()`` gives the peers to program, one per usable lease other than
our own. ``plan(current, desired)`` diffs two such maps into operations; a backend carries them
out (per peer, as flanneld's vxlan backend: a permanent neighbour entry ``<subnet>.0 ->
VtepMAC``, a permanent FDB entry ``VtepMAC -> PublicIP`` and a route ``<subnet> via <subnet>.0
onlink``), and the caller records the result in its current map.

Rules, all in this file:
- a key whose value does not decode (not JSON, bad MAC or IP, foreign backend type, not a
  subnet key) is no lease: it is reported once per distinct problem and, if a good lease was at
  that key, that lease is withdrawn (the key's value is what counts, in watches and resyncs
  alike);
- our own subnet is never a peer; a lease carrying our PublicIP under another subnet is skipped;
- two leases with one VtepMAC: the lower subnet wins, the other is reported (an FDB entry is
  per MAC);
- a changed MAC is a remove and an add (the old FDB entry goes first); a changed PublicIP alone
  is an update of the FDB entry; removals come before additions.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from .lease import Lease, LeaseError, decode_lease

__all__ = ["Peer", "Op", "LeaseTable", "plan", "apply_result"]

Subnet = ipaddress.IPv4Network


@dataclass(frozen=True)
class Peer:
    """What one remote node needs on this node."""

    subnet: Subnet
    mac: str  # the remote VTEP's MAC
    public_ip: ipaddress.IPv4Address  # the remote VTEP's underlay address

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """``<subnet>.0``: the next hop of the route and the neighbour entry's address."""
        return self.subnet.network_address

    @classmethod
    def from_lease(cls, lease: Lease) -> Peer:
        return cls(lease.subnet, lease.vtep_mac, lease.public_ip)


@dataclass(frozen=True)
class Op:
    """``add`` a peer, ``remove`` one, or ``update`` its FDB entry's destination (``old`` is
    the entry it replaces)."""

    kind: Literal["add", "remove", "update"]
    peer: Peer
    old: Peer | None = None


class LeaseTable:
    """The leases under one prefix, by subnet; decoding problems by key."""

    def __init__(self) -> None:
        self.leases: dict[Subnet, Lease] = {}
        self._keys: dict[str, Subnet] = {}  # etcd key -> subnet of the good lease at it
        self._key_of: dict[Subnet, str] = {}
        self.problems: dict[str, str] = {}  # etcd key -> why its value is not a lease
        self.skipped: dict[str, str] = {}  # etcd key -> why desired() left its lease out
        self._reported: set[str] = set()

    def reset(self, kvs: Iterable[tuple[str, bytes | str]]) -> None:
        """Replace everything with a snapshot (a range read of the prefix)."""
        self.leases.clear()
        self._keys.clear()
        self._key_of.clear()
        self.problems.clear()
        for key, value in kvs:
            self.put(key, value)

    def put(self, key: str, value: bytes | str) -> Lease | None:
        """A key was written: the lease it now holds, or None (see ``problems``)."""
        self._drop(key)
        try:
            lease = decode_lease(key, value)
        except LeaseError as exc:
            self.problems[key] = str(exc)
            return None
        other = self._key_of.get(lease.subnet)
        if other is not None:  # two keys for one subnet (only a dual-stack suffix differs)
            self._keys.pop(other, None)
        self.leases[lease.subnet] = lease
        self._keys[key] = lease.subnet
        self._key_of[lease.subnet] = key
        return lease

    def delete(self, key: str) -> Subnet | None:
        """A key was deleted (or its etcd lease expired): the subnet withdrawn, if any."""
        self.problems.pop(key, None)
        return self._drop(key)

    def _drop(self, key: str) -> Subnet | None:
        subnet = self._keys.pop(key, None)
        if subnet is not None:
            self.leases.pop(subnet, None)
            self._key_of.pop(subnet, None)
        return subnet

    def lease(self, subnet: Subnet) -> Lease | None:
        return self.leases.get(subnet)

    def desired(
        self, own_subnet: Subnet | None, own_ip: ipaddress.IPv4Address | None
    ) -> dict[Subnet, Peer]:
        """The peers to program; the leases left out are in ``skipped``."""
        out: dict[Subnet, Peer] = {}
        macs: dict[str, Subnet] = {}
        self.skipped = {}
        for subnet in sorted(self.leases):
            lease = self.leases[subnet]
            key = self._key_of[subnet]
            if subnet == own_subnet:
                continue
            if own_ip is not None and lease.public_ip == own_ip:
                self.skipped[key] = f"{key}: carries this node's PublicIP {own_ip}: skipped"
                continue
            if lease.vtep_mac in macs:
                self.skipped[key] = (
                    f"{key}: VtepMAC {lease.vtep_mac} is already used by the lease of "
                    f"{macs[lease.vtep_mac]}: skipped"
                )
                continue
            macs[lease.vtep_mac] = subnet
            out[subnet] = Peer.from_lease(lease)
        return out

    def new_problems(self) -> list[str]:
        """Problems not reported before (each distinct message once, until it goes away)."""
        current = set(self.problems.values()) | set(self.skipped.values())
        fresh = sorted(current - self._reported)
        self._reported = current
        return fresh


def plan(current: Mapping[Subnet, Peer], desired: Mapping[Subnet, Peer]) -> list[Op]:
    """The operations that turn ``current`` into ``desired``: removals first, then updates and
    additions, each in subnet order."""
    removes: list[Op] = []
    changes: list[Op] = []
    for subnet in sorted(current):
        old = current[subnet]
        new = desired.get(subnet)
        if new is None:
            removes.append(Op("remove", old))
        elif new.mac != old.mac:
            removes.append(Op("remove", old))
            changes.append(Op("add", new))
        elif new.public_ip != old.public_ip:
            changes.append(Op("update", new, old))
    for subnet in sorted(desired):
        if subnet not in current:
            changes.append(Op("add", desired[subnet]))
    changes.sort(key=lambda op: op.peer.subnet)
    return removes + changes


def apply_result(current: dict[Subnet, Peer], ops: Iterable[Op], failed: Iterable[Op]) -> None:
    """Record in ``current`` what the backend did: every op but the failed additions and
    updates (a failed removal is taken as done: the entry is gone or unusable either way)."""
    bad = {id(op) for op in failed}
    for op in ops:
        if op.kind == "remove":
            current.pop(op.peer.subnet, None)
        elif id(op) not in bad:
            current[op.peer.subnet] = op.peer
        elif op.kind == "update":
            current.pop(op.peer.subnet, None)  # state unknown: re-added on the next plan
