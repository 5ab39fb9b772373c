"""The FDB and neighbour-table operations of the control socket and the API, in the words of
``bridge fdb`` (add, append, replace, del) and ``ip neigh`` (add, replace, del)."""

from __future__ import annotations

import ipaddress

from .fdb import Fdb, Remote
from .neigh import NeighTable
from .wire import parse_mac

__all__ = ["fdb_update", "neigh_update"]


def fdb_update(
    fdb: Fdb,
    family: int,
    op: str,
    mac: str,
    ip: str | None = None,
    port: int | None = None,
    remote_vni: int | None = None,
) -> None:
    """``op`` on ``fdb``; ValueError for a bad operation or a ``dst`` not of the underlay's
    IP ``family`` (4 or 6)."""
    m = parse_mac(mac)
    remote = Remote.make(ip, port, remote_vni) if ip is not None else None
    if remote is not None and ipaddress.ip_address(remote.ip).version != family:
        raise ValueError(f"dst {remote.ip} is not an IPv{family} address (the underlay's)")
    if op == "del":
        fdb.delete(m, remote)
    elif remote is None:
        raise ValueError(f"fdb {op} needs a destination IP")
    elif op == "add":
        fdb.add(m, remote)
    elif op == "append":
        fdb.append(m, remote)
    elif op == "replace":
        fdb.replace(m, remote)
    else:
        raise ValueError(f"unknown fdb operation {op!r}")


def neigh_update(table: NeighTable, op: str, ip: str, mac: str | None = None) -> None:
    """``op`` on the neighbour ``table``; ValueError for a bad operation or a missing MAC."""
    if op == "del":
        table.delete(ip)
    elif mac is None:
        raise ValueError(f"neigh {op} needs a MAC (lladdr)")
    elif op == "add":
        table.add(ip, parse_mac(mac))
    elif op == "replace":
        table.replace(ip, parse_mac(mac))
    else:
        raise ValueError(f"unknown neigh operation {op!r}")
