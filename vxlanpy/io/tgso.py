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
import logging
import os
import secrets
import socket
import struct
import subprocess
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytun

from . import hostwatch
from .netlink import NetlinkError, configure_link, link_index, next_hop, session

if TYPE_CHECKING:
    from ..datapath import Datapath

log = logging.getLogger("vxlanpy.tgso")

__all__ = [
    "TunnelGso",
    "TunnelGsoControl",
    "TunnelGsoError",
    "LinkRefresher",
    "probe",
    "default_ttl",
    "Link",
]

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

    def link(
        self,
        ip: str,
        ipr: Any = None,
        macs: dict[int, bytes] | None = None,
        hops: dict[str, str] | None = None,
    ) -> Link | None:
        """The outer addresses for IPv4 remote ``ip``, if the kernel's route to it leaves by the
        underlay device and its next hop is resolved (blocking netlink calls: run it in a
        thread; ``ipr``, ``macs`` and ``hops``: see :func:`netlink.next_hop`)."""
        try:
            socket.inet_aton(ip)
        except OSError:
            return None
        hop = next_hop(ip, ipr, macs, hops)
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
    """Keeps the datapath's remote links current by looking remotes up in the kernel's
    tables, in a worker thread, at most ``budget`` a round, round robin.

    A route, rule, address or link change the kernel announces (io/hostwatch.py) takes every
    link away at once (their super-frames are cut, as datagrams, which is always right) and
    looks them up again. A neighbour change makes the next round, within 50 ms, look up the
    remotes whose next hop (the route's gateway, or the remote itself) is that neighbour, as
    the last lookup found it; one the notification does not name (a lost or odd message)
    makes it a sweep of every remote. The neighbours of other hosts on the underlay, and
    their entries going stale and back, cost no lookup. Since the kernel announces what
    changes a link, the rounds of every
    ``period`` seconds are a backstop: a remote without a link is looked up in each of the
    ``sweep_every`` rounds after it appeared or lost its link, and every remote in a sweep
    every ``sweep_every`` rounds. A lookup costs about 1 ms of CPU (pyroute2); looking up 64
    remotes every second kept an idle VTEP at 5-6 % of a core.

    With ``auto``, links are only given while the host has nothing on the IPv4 output path
    they would skip (``why_not`` says what there is), and an nftables or xfrm change takes them
    away at once too.

    ``why_not`` starts as what :func:`hostwatch.skipped` found at start (read before any
    privilege drop: it needs CAP_NET_ADMIN)."""

    def __init__(
        self,
        tgso: TunnelGso,
        dp: Datapath,
        period: float = 1.0,
        budget: int = 64,
        sweep_every: int = 10,
        auto: bool = False,
        why_not: str | None = None,
    ):
        self.tgso, self.dp, self.period, self.budget = tgso, dp, period, budget
        self.auto = auto
        self.why_not = why_not if auto else None
        self.linked: dict[int, Link] = {}  # remote id -> its link, as installed
        self.withdrawals = 0  # times a change took links away (while there were some)
        self._gen = 0  # every withdrawal, links or not: lookups begun before it are stale
        self._logged: str | None = self.why_not  # the state last logged
        self.sweep_every = sweep_every
        self._after = -1  # round robin: the last remote id a round looked up
        self._rounds = 0
        self._sweep = True  # this round looks up the linked remotes too
        self._sweep_more = 0  # rounds the current sweep still needs (over budget remotes)
        self._misses: dict[int, int] = {}  # remote id -> lookups in a row that found no link
        self._hop: dict[int, str] = {}  # remote id -> its next hop's address, as last found
        self._pending: set[int] = set()  # remotes a neighbour change concerns, to look up
        self._policy_dirty = False  # an nftables or xfrm change to read back
        self._netxfrm = self.why_not  # what of it nftables and xfrm hold (auto)
        self._wake = asyncio.Event()
        self._watch: hostwatch.HostWatch | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(
        self, loop: asyncio.AbstractEventLoop, watch: hostwatch.HostWatch
    ) -> asyncio.Task[None]:
        """Act on ``watch``'s notifications (subscribed before the start-up read, so that a
        change between the two is read from its socket now) and run."""
        watch.on_policy, watch.on_route, watch.on_neigh = (
            self._on_policy, self._on_route, self._on_neigh,
        )  # fmt: skip
        self._watch = watch
        self._loop = loop
        for fd, callback in self._watch.sockets():
            loop.add_reader(fd, callback)
        return loop.create_task(self.run())

    def close(self) -> None:
        if self._watch is not None and self._loop is not None:
            for fd, _cb in self._watch.sockets():
                self._loop.remove_reader(fd)
            self._watch.close()
        self._watch = None

    def _on_policy(self) -> None:
        self._policy_dirty = True
        if self.auto:
            self.withdraw()
            self.why_not = "nftables or xfrm changed: reading them again"
        self._wake.set()

    def _on_route(self) -> None:
        self.withdraw()
        self._wake.set()

    def _on_neigh(self, addrs: frozenset[str] | None = None) -> None:
        """Neighbours ``addrs`` changed (None: some neighbour did)."""
        if addrs is None:
            self._sweep = True  # any remote's next hop may have changed
            self._wake.set()
            return
        hit = {
            rid
            for rid, ip, _port in self.dp.remotes()
            if ip in addrs or self._hop.get(rid) in addrs
        }
        if hit - self._pending:
            self._pending |= hit
            self._wake.set()

    def withdraw(self) -> None:
        """Take every link away: super-frames are cut into datagrams until the next round."""
        self._gen += 1
        self.withdrawals += bool(self.linked)
        for rid in self.linked:
            self.dp.set_remote_link(rid, None)
        self.linked.clear()
        self._misses.clear()  # every remote is tried every round again

    def _batch(self) -> list[tuple[int, str]]:
        """This round's lookups: the remotes without a link, and all of them in a sweep
        (every ``sweep_every`` rounds, or after a neighbour change; over as many rounds as
        ``budget`` needs), at most ``budget``."""
        self._rounds += 1
        more = self._sweep_more > 0  # a sweep that did not fit in one round goes on
        sweep = more or self._sweep or self._rounds % self.sweep_every == 0
        self._sweep = False
        remotes = sorted((rid, ip) for rid, ip, _port in self.dp.remotes())
        pool = (
            remotes if sweep else [r for r in remotes if self._eager(r[0]) or r[0] in self._pending]
        )
        if sweep:
            rounds = -(-len(pool) // self.budget) if self.budget > 0 else 1
            self._sweep_more = self._sweep_more - 1 if more else rounds - 1
        # round robin by remote id: this round starts after the last one looked up
        start = next((k for k, (rid, _ip) in enumerate(pool) if rid > self._after), 0)
        batch = (pool[start:] + pool[:start])[: self.budget]
        if batch:
            self._after = batch[-1][0]
        self._pending.difference_update(rid for rid, _ip in batch)
        return batch

    def _eager(self, rid: int) -> bool:
        """Looked up every round: no link, and fewer than ``sweep_every`` lookups in a row that
        found none (a remote that stays unresolved waits for the sweeps and for the kernel's
        neighbour notification, which resolving it sends)."""
        return rid not in self.linked and self._misses.get(rid, 0) < self.sweep_every

    def _lookups(
        self, batch: list[tuple[int, str]]
    ) -> tuple[list[tuple[int, Link | None]], dict[int, str]]:
        """Each remote's link (None: none) and, where its route was found, its next hop."""
        hops: dict[str, str] = {}
        try:
            with session() as ipr:  # one netlink socket for the round, not one a remote
                macs: dict[int, bytes] = {}
                found = [(rid, self.tgso.link(ip, ipr, macs, hops)) for rid, ip in batch]
        except OSError:  # no socket: no link this round (super-frames are cut)
            found = [(rid, None) for rid, _ip in batch]
        return found, {rid: hops[ip] for rid, ip in batch if ip in hops}

    def _skipped(self) -> str | None:
        """What tunnel GSO would skip now: nftables and xfrm are read again after a change
        only, iptables-legacy (which announces nothing) every round. In the loop's thread:
        after a privilege drop only it has capabilities (worker threads have none), and no
        notification is handled between the read and its result being applied."""
        if self._policy_dirty:
            self._policy_dirty = False
            self._netxfrm = hostwatch.netfilter_xfrm()
        legacy_fd = self._watch.legacy_fd if self._watch is not None else None
        return self._netxfrm or hostwatch.legacy(legacy_fd)

    def refresh(
        self, found: list[tuple[int, Link | None]], hops: dict[int, str] | None = None
    ) -> None:
        """Install what the lookups found, and note the next hops they found (``hops``), in
        the loop's thread: the datapath is not locked against the engine's own changes
        otherwise."""
        live = {rid for rid, _ip, _port in self.dp.remotes()}
        self._hop.update(hops or {})
        for rid, link in found:
            if link is None:
                self._misses[rid] = self._misses.get(rid, 0) + 1
            else:
                self._misses.pop(rid, None)
            if rid in live and self.linked.get(rid) != link:
                self.dp.set_remote_link(rid, link)
                if link is None:
                    self.linked.pop(rid, None)
                else:
                    self.linked[rid] = link
        for rid in [r for r in self.linked if r not in live]:
            del self.linked[rid]
        for table in (self._misses, self._hop):
            for rid in [r for r in table if r not in live]:
                del table[rid]
        self._pending &= live

    async def run(self) -> None:
        while True:
            self._wake.clear()
            if self.auto:
                why = self._skipped()  # quick netlink dumps, and only after a change
                if why != self._logged:
                    log.info("tunnel GSO %s", f"withheld: {why}" if why else "in use")
                self.why_not = self._logged = why
            if self.why_not is not None:
                self.withdraw()
            else:
                seen = self._gen
                batch = self._batch()
                found, hops = await asyncio.to_thread(self._lookups, batch) if batch else ([], {})
                if self._gen == seen:  # else a change came meanwhile: look again first
                    self.refresh(found, hops)
            try:
                await asyncio.wait_for(self._wake.wait(), self.period)
                await asyncio.sleep(0.05)  # a burst of changes: one round for all of it
            except TimeoutError:
                pass


def _nothing(*_args: object) -> None:
    """A notification before the refresher runs: it stays in the socket until then."""


class TunnelGsoControl:
    """A VTEP's tunnel GSO, whatever its mode: set up (:meth:`setup`, in the set-up thread,
    before any privilege drop), attached to the datapath with its refresher (:meth:`attach`,
    in the loop's thread), closed (:meth:`close`); ``why_not`` says why super-frames are not
    sent whole now (None: they are, to the remotes with a link).

    ``mode``: "on" (errors are the caller's: TunnelGsoError), "auto" (where it cannot work or
    there is something to skip, super-frames are cut and ``why_not`` says why), "off"."""

    def __init__(self, mode: str, unfit: str | None) -> None:
        self.mode = mode
        self.tap: TunnelGso | None = None  # the redirected TAP, while set up
        self.on = False  # it was set up and attached (stays True once closed)
        self.links: LinkRefresher | None = None
        self._why: str | None = {"off": "off", "auto": unfit}.get(mode)
        self._task: asyncio.Task[None] | None = None
        self._watch: hostwatch.HostWatch | None = None  # until the refresher takes it

    def setup(self, underlay_dev: Callable[[], str]) -> None:
        """Create the redirected TAP on the underlay device ``underlay_dev()`` names (it raises
        TunnelGsoError if none) and read what the host holds that it would skip."""
        if self.mode == "on":
            self.tap = TunnelGso(underlay_dev())
        elif self.mode == "auto" and self._why is None:
            try:
                self.tap = TunnelGso(underlay_dev())
            except TunnelGsoError as exc:
                self._why = str(exc).removeprefix("tunnel GSO: ")
        if self.tap is not None:
            try:  # subscribe first, then read: a change in between is then announced
                self._watch = hostwatch.HostWatch(_nothing, _nothing, _nothing, self.tap.dev_index)
            except OSError as exc:
                self.close(None)
                if self.mode == "on":
                    raise TunnelGsoError(f"cannot watch the kernel's tables: {exc}") from exc
                self._why = f"cannot watch the kernel's tables ({exc.strerror or exc})"
            else:
                self._why = hostwatch.skipped() if self.mode == "auto" else None
        log.debug("tunnel GSO %s: %s", "set up" if self.tap else "not used", self._why)

    def attach(self, dp: Datapath, loop: asyncio.AbstractEventLoop) -> None:
        """Have the datapath write super-frames to the TAP, and keep its links current."""
        if self.tap is None:
            return
        assert self._watch is not None
        dp.set_link(self.tap.fd, default_ttl())
        self.links = LinkRefresher(self.tap, dp, auto=self.mode == "auto", why_not=self._why)
        self._task = self.links.start(loop, self._watch)
        self._watch = None  # the refresher's now: it closes it
        self.on = True

    def leave_out(self, why: str) -> None:
        """Not attached after all (the VTEP forwards without the C datapath): say why."""
        self.close(None)
        self._why = why

    @property
    def why_not(self) -> str | None:
        return self.links.why_not if self.links is not None else self._why

    def close(self, dp: Datapath | None) -> None:
        """Stop refreshing, detach from the datapath, remove the TAP. Idempotent."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.links is not None:
            self.links.close()
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self.tap is not None:
            if dp is not None:
                dp.set_link(-1, 0)
            self.tap.close()
            self.tap = None
