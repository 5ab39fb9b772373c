"""The kernel side of flannel's tables, through pyroute2: routes, neighbours, FDB, the device.

Synchronous (pyroute2 0.9 runs its own loop): call from a worker thread (``asyncio.to_thread``),
never from a thread with a running event loop. ``program`` applies a whole batch of
operations in one netlink session, as flanneld's vxlan backend does per lease: the neighbour
entry, then the FDB entry, then the route (so the kernel never ARPs for the next hop).
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..io.netlink import NetlinkError, session
from .registry import Op, Peer

__all__ = [
    "Underlay",
    "find_underlay",
    "create_vxlan",
    "delete_link",
    "set_address",
    "program",
    "NUD_PERMANENT",
]

NUD_PERMANENT = 0x80
NUD_NOARP = 0x40
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04
RTPROT_BOOT = 3  # what `ip route add` and flanneld's netlink library use
_GONE = (errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENODEV)


@dataclass(frozen=True)
class Underlay:
    """The interface flannel traffic leaves by, its address and MTU."""

    dev: str
    ip: ipaddress.IPv4Address  # bound to (local address of the tunnel)
    mtu: int
    index: int


def _v4_addrs(ipr: Any, index: int) -> list[str]:
    return [
        str(a.get_attr("IFA_ADDRESS"))
        for a in ipr.get_addr(index=index, family=2)
        if a.get_attr("IFA_ADDRESS")
    ]


def find_underlay(iface: str | None, public_ip: str | None) -> Underlay:
    """Resolve ``--iface`` (a name or an address) and ``--public-ip`` as flanneld does: the
    given interface, else the one holding the public IP, else the default route's."""
    with session() as ipr:
        index = None
        if iface:
            found = ipr.link_lookup(ifname=iface)
            if found:
                index = found[0]
            else:
                for a in ipr.get_addr(address=iface):
                    index = a["index"]
                    break
            if index is None:
                raise NetlinkError(f"interface {iface} not found (no such device or address)")
        elif public_ip:
            for a in ipr.get_addr(address=public_ip):
                index = a["index"]
                break
        if index is None:
            target = public_ip or "198.18.0.0"
            routes = ipr.route("get", dst=target) if public_ip else ipr.get_default_routes(2)
            for r in routes:
                index = r.get_attr("RTA_OIF")
                break
        if index is None:
            raise NetlinkError("no interface for flannel traffic: give --iface or --public-ip")
        link = ipr.get_links(index)[0]
        name = str(link.get_attr("IFLA_IFNAME"))
        addrs = _v4_addrs(ipr, index)
        if iface and iface in addrs:
            addrs = [iface]
        if not addrs:
            raise NetlinkError(f"interface {name} has no IPv4 address")
        mtu = int(link.get_attr("IFLA_MTU"))
        return Underlay(name, ipaddress.IPv4Address(addrs[0]), mtu, index)


def create_vxlan(
    name: str,
    *,
    vni: int,
    underlay: Underlay,
    port: int,
    mtu: int,
    gbp: bool = False,
    learning: bool = False,
) -> tuple[int, str]:
    """Create flanneld's kernel device (``ip link add flannel.1 type vxlan id 1 local IP dev
    IF dstport 8472 nolearning``), set its MTU and bring it up. Returns (ifindex, MAC)."""
    kw: dict[str, Any] = {
        "vxlan_id": vni,
        "vxlan_link": underlay.index,
        "vxlan_local": str(underlay.ip),
        "vxlan_port": port,
        "vxlan_learning": 1 if learning else 0,
    }
    if gbp:
        kw["vxlan_gbp"] = True
    with session() as ipr:
        if ipr.link_lookup(ifname=name):
            raise NetlinkError(f"interface {name} exists already (another flannel agent?)")
        try:
            ipr.link("add", ifname=name, kind="vxlan", **kw)
            index = ipr.link_lookup(ifname=name)[0]
            ipr.link("set", index=index, mtu=mtu)
            ipr.link("set", index=index, state="up")
            mac = str(ipr.get_links(index)[0].get_attr("IFLA_ADDRESS"))
        except Exception as exc:
            raise NetlinkError(f"creating {name}: {exc}") from exc
    return int(index), mac


def delete_link(name: str) -> None:
    with session() as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            try:
                ipr.link("del", index=found[0])
            except Exception as exc:
                raise NetlinkError(f"deleting {name}: {exc}") from exc


def set_address(name: str, subnet: ipaddress.IPv4Network) -> int:
    """Put ``<subnet>.0/32`` on ``name`` (and bring it up), as flanneld: the /32 adds no
    connected route, so every peer subnet goes by its own route. Returns the ifindex."""
    with session() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise NetlinkError(f"no such device: {name}")
        index = int(found[0])
        addr = str(subnet.network_address)
        try:
            for a in ipr.get_addr(index=index, family=2):
                old = a.get_attr("IFA_ADDRESS")
                if old and old != addr:
                    ipr.addr("del", index=index, address=old, prefixlen=a["prefixlen"])
            if addr not in _v4_addrs(ipr, index):
                ipr.addr("add", index=index, address=addr, prefixlen=32)
            ipr.link("set", index=index, state="up")
        except Exception as exc:
            raise NetlinkError(f"configuring {name}: {exc}") from exc
    return index


def _neigh(ipr: Any, cmd: str, index: int, peer: Peer) -> None:
    ipr.neigh(cmd, ifindex=index, dst=str(peer.gateway), lladdr=peer.mac, state=NUD_PERMANENT)


def _fdb(ipr: Any, cmd: str, index: int, peer: Peer) -> None:
    ipr.fdb(
        cmd,
        ifindex=index,
        lladdr=peer.mac,
        dst=str(peer.public_ip),
        state=NUD_PERMANENT | NUD_NOARP,
        flags=NTF_SELF,
    )


def _route(ipr: Any, cmd: str, index: int, peer: Peer) -> None:
    ipr.route(
        cmd,
        dst=str(peer.subnet),
        gateway=str(peer.gateway),
        oif=index,
        flags=RTNH_F_ONLINK,
        proto=RTPROT_BOOT,
    )


def _quiet(fn: Any, *args: Any) -> None:
    """A removal: an entry that is gone already is not an error."""
    try:
        fn(*args)
    except Exception as exc:
        if getattr(exc, "code", None) not in _GONE:
            raise


def program(index: int, ops: Sequence[Op], *, fdb: bool) -> list[tuple[Op, str]]:
    """Carry out ``ops`` on device ``index``: neighbour, FDB (``fdb``: the kernel's vxlan
    device; vxlanpy keeps its FDB itself) and route per peer. Returns the failed ops with the
    error; the others are done."""
    failed: list[tuple[Op, str]] = []
    with session() as ipr:
        for op in ops:
            p = op.peer
            try:
                if op.kind == "add":
                    _neigh(ipr, "replace", index, p)
                    if fdb:
                        _fdb(ipr, "replace", index, p)
                    _route(ipr, "replace", index, p)
                elif op.kind == "update":
                    if fdb:
                        _fdb(ipr, "replace", index, p)
                else:
                    _quiet(_route, ipr, "del", index, p)
                    if fdb:
                        _quiet(_fdb, ipr, "del", index, p)
                    _quiet(_neigh, ipr, "del", index, p)
            except Exception as exc:
                failed.append((op, f"{op.kind} {p.subnet} via {p.public_ip}: {exc}"))
    return failed
