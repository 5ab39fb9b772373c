"""Link and address configuration through netlink (pyroute2), never by parsing ``ip`` output."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
from collections.abc import Iterator
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError as NetlinkErrorBase

__all__ = [
    "NetlinkError",
    "link_index",
    "link_exists",
    "link_mtu",
    "link_mac",
    "configure_link",
    "device_for_address",
    "underlay_mtu",
    "has_net_admin",
    "next_hop",
    "session",
]

# neighbour states with a usable link-layer address (linux/neighbour.h NUD_*)
_NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # REACHABLE STALE DELAY PROBE NOARP PERM


class NetlinkError(Exception):
    """A link/address operation failed; the message names the device."""


@contextlib.contextmanager
def session() -> Iterator[Any]:
    """An IPRoute on a private plain-asyncio loop, for netlink calls in a row.

    pyroute2 0.9 drives netlink through asyncio; uvloop cannot open AF_NETLINK endpoints, and no
    loop may run inside a running one. So these calls are synchronous, must not be made from a
    thread with a running loop (the driver calls them through ``asyncio.to_thread``), and get a
    selector loop of their own whatever the event-loop policy is.
    """
    loop = asyncio.SelectorEventLoop()
    try:
        with IPRoute(use_event_loop=loop) as ipr:
            yield ipr
    finally:
        loop.close()


def link_index(name: str) -> int | None:
    with session() as ipr:
        idx = ipr.link_lookup(ifname=name)
    return int(idx[0]) if idx else None


def link_exists(name: str) -> bool:
    return link_index(name) is not None


def _link_attr(name: str, attr: str) -> Any:
    with session() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            raise NetlinkError(f"no such device: {name}")
        return ipr.get_links(idx[0])[0].get_attr(attr)


def link_mtu(name: str) -> int:
    return int(_link_attr(name, "IFLA_MTU"))


def link_mac(name: str) -> bytes:
    return bytes.fromhex(str(_link_attr(name, "IFLA_ADDRESS")).replace(":", ""))


def configure_link(
    name: str,
    *,
    mtu: int | None = None,
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None = None,
    bridge: str | None = None,
    mac: bytes | None = None,
    txqlen: int | None = None,
    up: bool = True,
) -> None:
    """Set MTU, MAC and queue length, add an address, enslave to ``bridge``, bring it up."""
    with session() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            raise NetlinkError(f"no such device: {name}")
        index = idx[0]
        try:
            if mtu is not None:
                ipr.link("set", index=index, mtu=mtu)
            if mac is not None:
                ipr.link("set", index=index, address=mac.hex(":"))
            if txqlen is not None:
                ipr.link("set", index=index, txqlen=txqlen)
            if bridge is not None:
                br = ipr.link_lookup(ifname=bridge)
                if not br:
                    raise NetlinkError(f"bridge {bridge} does not exist")
                ipr.link("set", index=index, master=br[0])
            if address is not None:
                ipr.addr(
                    "add",
                    index=index,
                    address=str(address.ip),
                    prefixlen=address.network.prefixlen,
                )
            if up:
                ipr.link("set", index=index, state="up")
        except NetlinkError:
            raise
        except Exception as exc:  # pyroute2 raises its own NetlinkError with an errno
            raise NetlinkError(f"configuring {name}: {exc}") from exc


def device_for_address(ip: str) -> str | None:
    """The device that holds the local address ``ip``, if any."""
    with session() as ipr:
        for a in ipr.get_addr(address=ip):
            links = ipr.get_links(a["index"])
            if links:
                return str(links[0].get_attr("IFLA_IFNAME"))
    return None


def route_device(dest: str) -> str | None:
    """The device the kernel would use to reach ``dest``, if there is a route."""
    try:
        with session() as ipr:
            routes = ipr.route("get", dst=dest)
            if not routes:
                return None
            oif = routes[0].get_attr("RTA_OIF")
            links = ipr.get_links(oif)
            return str(links[0].get_attr("IFLA_IFNAME")) if links else None
    except Exception:
        return None


def next_hop(
    dest: str,
    ipr: Any = None,
    macs: dict[int, bytes] | None = None,
    hops: dict[str, str] | None = None,
) -> tuple[int, bytes, bytes, str] | None:
    """How the kernel reaches IPv4 ``dest``: (device index, the device's MAC, the next hop's
    MAC from the neighbour table, the source address it would use); None if there is no route,
    no source address or no usable neighbour entry yet (sending to it resolves one).

    ``ipr``: an open :func:`session` to ask through (several lookups in a row), else one of
    its own. The neighbour is asked for by address (RTM_GETNEIGH for one entry, Linux 4.19):
    a dump of the table filtered here cost 6.7 ms of CPU a lookup with 80 neighbours, the
    single entry 0.4. ``macs``: device index -> its MAC, filled and reused across a round of
    lookups (the device's own MAC is another 0.6 ms to ask for). ``hops``: ``dest`` -> the
    address of its next hop (the route's gateway, else ``dest``) is set there once the route is
    known, whether or not its neighbour entry is usable yet."""
    if ipr is None:
        try:
            with session() as own:
                return next_hop(dest, own, macs, hops)
        except OSError:  # no netlink socket (descriptors, memory): no hop known
            return None
    try:
        routes = ipr.route("get", dst=dest)
        if not routes:
            return None
        rt = routes[0]
        oif, src = rt.get_attr("RTA_OIF"), rt.get_attr("RTA_PREFSRC")
        hop = rt.get_attr("RTA_GATEWAY") or dest
        if oif is None or src is None or rt["type"] != 1:  # RTN_UNICAST
            return None
        if hops is not None:
            hops[dest] = str(hop)
        for n in _neighbour(ipr, int(oif), hop):
            mac = n.get_attr("NDA_LLADDR")
            if mac and n["state"] & _NUD_USABLE:
                own = macs.get(int(oif)) if macs is not None else None
                if own is None:
                    own = _mac(ipr.get_links(oif)[0].get_attr("IFLA_ADDRESS"))
                    if macs is not None:
                        macs[int(oif)] = own
                return int(oif), own, _mac(mac), str(src)
    except Exception:
        return None
    return None


def _neighbour(ipr: Any, oif: int, hop: str) -> Any:
    """The neighbour entry for ``hop`` on ``oif`` (none if there is none); through a dump
    where the kernel does not answer a request for one entry."""
    try:
        return ipr.neigh("get", dst=hop, ifindex=oif)
    except NetlinkErrorBase as exc:
        if exc.code == errno.ENOENT:
            return []
        if exc.code not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
    return ipr.get_neighbours(ifindex=oif, dst=hop)


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def underlay_mtu(local: str | None, remote: str | None, dev: str | None) -> int | None:
    """MTU of the underlay device: ``dev``, else the one holding ``local``, else the route to
    ``remote``; None if none of them can be found."""
    name = dev or (device_for_address(local) if local else None)
    if name is None and remote:
        name = route_device(remote)
    return link_mtu(name) if name else None


def has_net_admin() -> bool:
    """True when this process may create TAPs and raw sockets (root, or both capabilities)."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
                    return bool(caps & (1 << 12)) and bool(caps & (1 << 13))
    except OSError:
        pass
    return False
