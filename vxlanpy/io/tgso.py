"""Tunnel GSO (``--tunnel-gso``): TCP super-frames handed to the kernel whole.

Without it, a 64 KiB TCP super-frame read from a segment's TAP is cut here into some 45 VXLAN
datagrams, and a kernel peer receives and decapsulates each of them on its own. Linux 6.17+
takes a UDP-tunnel GSO packet on a TAP (a 24-byte virtio-net header with
``VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4``): csrc/tgso.c writes the whole outer frame (Ethernet,
IPv4, UDP, VXLAN) in front of the super-frame to a TAP of this module's, whose ingress tc
redirects to the underlay device (``mirred egress redirect``). The kernel segments it when it
leaves (or the device does), and across a veth a kernel peer receives one packet.

The cost of taking this path: the packets skip the host's routing and netfilter (the redirect
puts them on the underlay device as they are), so the outer headers come from what this module
reads of the kernel's tables: the route to each remote (it must leave by the underlay device),
its source address, the next hop's MAC from the neighbour table. A remote without a usable
neighbour entry, reached by another device, or over IPv6, keeps the datagram path (whose first
packets make the kernel resolve the neighbour). IPv4 underlays only.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import secrets
import socket
import struct
import subprocess
from typing import TYPE_CHECKING

import pytun

from .netlink import NetlinkError, configure_link, link_index, next_hop

if TYPE_CHECKING:
    from ..datapath import Datapath

__all__ = ["TunnelGso", "TunnelGsoError", "LinkRefresher", "probe", "default_ttl", "Link"]

TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
TUN_F_UDP_TUNNEL_GSO, TUN_F_UDP_TUNNEL_GSO_CSUM = 0x080, 0x100  # Linux 6.17
TNL_HLEN = 24  # struct virtio_net_hdr_v1_hash_tunnel

Link = tuple[bytes, bytes, bytes]  # next hop's MAC, the device's MAC, the source IPv4 address


class TunnelGsoError(Exception):
    """Tunnel GSO cannot be set up here; the message says why."""


def _tap(name: str) -> pytun.TunTapDevice:
    dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TAP | pytun.IFF_NO_PI | IFF_VNET_HDR)
    try:
        fd = dev.fileno()
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", TNL_HLEN))
        # unknown offload bits are refused: this is what tells a kernel that has it
        feats = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
        fcntl.ioctl(fd, TUNSETOFFLOAD, feats | TUN_F_UDP_TUNNEL_GSO | TUN_F_UDP_TUNNEL_GSO_CSUM)
    except OSError as exc:
        dev.close()
        if exc.errno == errno.EINVAL:
            raise TunnelGsoError(
                f"this kernel ({os.uname().release}) has no UDP-tunnel GSO on TAPs (Linux 6.17+)"
            ) from None
        raise TunnelGsoError(f"cannot set up the tunnel-GSO TAP: {exc}") from None
    return dev


def default_ttl() -> int:
    """The system's default IPv4 TTL (net.ipv4.ip_default_ttl of this namespace)."""
    try:
        with open("/proc/sys/net/ipv4/ip_default_ttl") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 64


def probe() -> str | None:
    """Why tunnel GSO cannot work on this host, or None if it can (needs CAP_NET_ADMIN)."""
    try:
        _tap("vxgprobe" + secrets.token_hex(3)).close()
    except TunnelGsoError as exc:
        return str(exc)
    except pytun.Error as exc:
        return f"cannot create a TAP: {exc}"
    return None


class TunnelGso:
    """The redirected TAP for the underlay device ``dev``, and the links to remotes."""

    def __init__(self, dev: str) -> None:
        index = link_index(dev)
        if index is None:
            raise TunnelGsoError(f"no underlay device {dev}")
        self.dev, self.dev_index = dev, index
        self.name = "vxg" + secrets.token_hex(4)  # 11 characters
        try:
            self._tap = _tap(self.name)
        except pytun.Error as exc:
            raise TunnelGsoError(f"cannot create the tunnel-GSO TAP: {exc}") from None
        self.fd = int(self._tap.fileno())
        try:
            os.set_blocking(self.fd, False)
            configure_link(self.name)  # up; what is written to it is not held to its MTU
            self._tc("qdisc", "add", "dev", self.name, "ingress")
            self._tc(
                "filter", "add", "dev", self.name, "parent", "ffff:", "protocol", "all",
                "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect",
                "dev", dev,
            )  # fmt: skip
        except (NetlinkError, OSError) as exc:
            self.close()
            raise TunnelGsoError(f"cannot set up the tunnel-GSO TAP: {exc}") from None
        except TunnelGsoError:
            self.close()
            raise

    @staticmethod
    def _tc(*args: str) -> None:
        try:
            p = subprocess.run(["tc", *args], capture_output=True, text=True, timeout=10)
        except OSError as exc:
            raise TunnelGsoError(f"tc: {exc}") from None
        if p.returncode != 0:
            raise TunnelGsoError(f"tc {' '.join(args)}: {p.stderr.strip() or p.returncode}")

    def link(self, ip: str) -> Link | None:
        """The outer addresses for IPv4 remote ``ip``, if the kernel's route to it leaves by the
        underlay device and its next hop is resolved (blocking netlink calls: run it in a
        thread)."""
        try:
            socket.inet_aton(ip)
        except OSError:
            return None
        hop = next_hop(ip)
        if hop is None or hop[0] != self.dev_index:
            return None
        _index, own, mac, src = hop
        return mac, own, socket.inet_aton(src)

    def close(self) -> None:
        """Close the TAP: it disappears, its tc rules with it."""
        try:
            self._tap.close()
        except Exception:
            pass


class LinkRefresher:
    """Keeps the datapath's remote links current: every ``period`` seconds, up to ``budget``
    remotes (round robin) are looked up in the kernel's tables, in a worker thread."""

    def __init__(self, tgso: TunnelGso, dp: Datapath, period: float = 1.0, budget: int = 64):
        self.tgso, self.dp, self.period, self.budget = tgso, dp, period, budget
        self.linked: dict[int, Link] = {}  # remote id -> its link, as installed
        self._next = 0

    def _batch(self) -> list[tuple[int, str]]:
        remotes = self.dp.remotes()
        if not remotes:
            return []
        start = self._next % len(remotes)
        batch = (remotes[start:] + remotes[:start])[: self.budget]
        self._next = start + len(batch)
        return [(rid, ip) for rid, ip, _port in batch]

    def _lookups(self, batch: list[tuple[int, str]]) -> list[tuple[int, Link | None]]:
        return [(rid, self.tgso.link(ip)) for rid, ip in batch]

    def refresh(self, found: list[tuple[int, Link | None]]) -> None:
        """Install what the lookups found (in the loop's thread: the datapath is not locked
        against the engine's own changes otherwise)."""
        live = {rid for rid, _ip, _port in self.dp.remotes()}
        for rid, link in found:
            if rid in live and self.linked.get(rid) != link:
                self.dp.set_remote_link(rid, link)
                if link is None:
                    self.linked.pop(rid, None)
                else:
                    self.linked[rid] = link
        for rid in [r for r in self.linked if r not in live]:
            del self.linked[rid]

    async def run(self) -> None:
        while True:
            self.refresh(await asyncio.to_thread(self._lookups, self._batch()))
            await asyncio.sleep(self.period)
