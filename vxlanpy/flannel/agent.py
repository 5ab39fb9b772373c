"""The flannel agent: a node of a flannel network, on etcd, with a vxlanpy or kernel dataplane.

What flanneld does with its etcd subnet manager and vxlan backend, in one asyncio task:

1. find an etcd member that answers (``connect_timeout``), read ``<prefix>/config``;
2. create the ``flannel.<VNI>`` device (the dataplane) to learn its MAC;
3. lease a subnet (subnets.choose_subnet; created in a transaction only if absent, bound to an
   etcd lease of ``lease_ttl``), put ``<subnet>.0/32`` on the device, write ``subnet.env``;
4. read every lease, program the peers (registry), then watch ``<prefix>/subnets/`` from the
   next revision; changes are batched (what arrived while the last batch was programmed);
5. renew the etcd lease ``renew_margin`` before it expires.

When etcd breaks (a member dies, the network goes), the tables stay as they are (the data plane
keeps forwarding) and the agent moves to the next endpoint with a growing delay; once one
answers it reads every lease again and programs the difference (a resync), then watches on.
Our own lease deleted while watched stops the agent, as flanneld ("lease revoked"); found
missing at a resync (it expired during an outage), it is created again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..config import VtepConfig
from ..io.netlink import NetlinkError
from . import netlink
from .config import AgentConfig
from .dataplane import Dataplane, DeviceInfo, KernelDataplane
from .etcd import EtcdClient, EtcdError, WatchEvent
from .lease import FlannelConfigError, Lease, NetworkConfig, parse_network_config, subnet_key
from .registry import LeaseTable, Peer, apply_result, plan
from .subnets import (
    OutOfSubnets,
    choose_subnet,
    read_previous_subnet,
    subnet_env,
    write_subnet_env,
)

__all__ = ["FlannelAgent", "AgentError", "make_dataplane"]

log = logging.getLogger("vxlanpy")

RACE_RETRIES = 10  # flanneld's raceRetries
BACKOFF_MIN, BACKOFF_MAX = 0.2, 5.0
RETRY_FAILED = 1.0  # seconds before failed operations are tried again


class AgentError(Exception):
    """The agent cannot start or must stop; ``code`` is the exit status (1 runtime, 2 bad
    configuration)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


DataplaneFactory = Callable[[NetworkConfig, netlink.Underlay], Dataplane]


def make_dataplane(cfg: AgentConfig) -> DataplaneFactory:
    """The dataplane ``cfg.backend`` names, as a factory of (network config, underlay)."""

    def build(net: NetworkConfig, underlay: netlink.Underlay) -> Dataplane:
        if cfg.backend == "kernel":
            return KernelDataplane(net, underlay)
        from ..control import default_path
        from .vxlanpy_backend import VxlanpyDataplane

        vtep = cfg.vtep or VtepConfig(segments=[])
        control = cfg.control or default_path(net.device)
        return VxlanpyDataplane(net, underlay, vtep=vtep, control=control)

    return build


@dataclass
class OwnLease:
    lease: Lease
    key: str
    lease_id: int


class FlannelAgent:
    """``await start()``, then ``await run(stop)`` until ``stop`` is set; ``await close()``."""

    def __init__(self, cfg: AgentConfig, dataplane: DataplaneFactory | None = None) -> None:
        self.cfg = cfg.validate()
        self.etcd = EtcdClient(cfg.etcd_endpoints)
        self._factory = dataplane or make_dataplane(cfg)
        self.dataplane: Dataplane | None = None
        self.network: NetworkConfig | None = None
        self.device: DeviceInfo | None = None
        self.own: OwnLease | None = None
        self.table = LeaseTable()
        self.peers: dict[ipaddress.IPv4Network, Peer] = {}  # what is programmed
        self._failed = False
        self._revision = 0
        self.resyncs = 0
        self.renewals = 0

    @property
    def subnets_prefix(self) -> str:
        return f"{self.cfg.etcd_prefix}/subnets/"

    # --- start ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Steps 1-4 of the module docstring; AgentError (after cleaning up) on failure."""
        try:
            await self._start()
        except BaseException:
            await self.close(release=False)
            raise

    async def _start(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        try:
            await self.etcd.connect_any(loop.time() + cfg.connect_timeout)
            raw = await self.etcd.get(f"{cfg.etcd_prefix}/config")
        except EtcdError as exc:
            raise AgentError(str(exc)) from None
        if raw is None:
            raise AgentError(
                f"no network config at {cfg.etcd_prefix}/config in etcd (write one, e.g. "
                f'etcdctl put {cfg.etcd_prefix}/config \'{{"Network": "198.19.0.0/16", '
                f'"Backend": {{"Type": "vxlan"}}}}\')',
                2,
            )
        try:
            self.network = net = parse_network_config(raw)
        except FlannelConfigError as exc:
            raise AgentError(f"{cfg.etcd_prefix}/config: {exc}", 2) from None
        try:
            underlay = await asyncio.to_thread(netlink.find_underlay, cfg.iface, cfg.public_ip)
        except NetlinkError as exc:
            raise AgentError(str(exc)) from None
        try:
            self.dataplane = self._factory(net, underlay)
            self.device = await self.dataplane.start()
        except AgentError:
            raise
        except Exception as exc:  # VtepError, NetlinkError, ControlError, ConfigError
            raise AgentError(f"cannot start the {cfg.backend} dataplane: {exc}") from None
        public = ipaddress.IPv4Address(cfg.public_ip) if cfg.public_ip else underlay.ip
        mine = Lease(ipaddress.IPv4Network("0.0.0.0/32"), public, self.device.mac, net.vni)
        try:
            self.own = await self._acquire(mine)
            await self.dataplane.set_subnet(self.own.lease.subnet)
        except EtcdError as exc:
            raise AgentError(f"cannot lease a subnet: {exc}") from None
        except NetlinkError as exc:
            raise AgentError(str(exc)) from None
        env = subnet_env(net, self.own.lease.subnet, self.device.mtu, cfg.ip_masq)
        try:
            write_subnet_env(cfg.subnet_file, env)
        except OSError as exc:
            raise AgentError(f"cannot write {cfg.subnet_file}: {exc.strerror}") from None
        try:
            self._revision = await self._resync()
        except EtcdError as exc:
            raise AgentError(f"cannot read the leases: {exc}") from None

    async def _acquire(self, mine: Lease) -> OwnLease:
        """Lease a subnet for ``mine`` (flanneld's AcquireLease)."""
        assert self.network is not None
        previous = read_previous_subnet(self.cfg.subnet_file)
        for _ in range(RACE_RETRIES):
            kvs, _rev = await self.etcd.get_prefix(self.subnets_prefix)
            table = LeaseTable()
            table.reset(kvs)
            try:
                choice = choose_subnet(
                    self.network, table.leases.values(), mine.public_ip, previous
                )
            except OutOfSubnets as exc:
                raise AgentError(str(exc)) from None
            if choice.stale is not None:
                log.info("deleting lease %s: not in the network config", choice.stale.subnet)
                await self.etcd.delete(self.subnets_prefix + subnet_key(choice.stale.subnet))
            lease = Lease(choice.subnet, mine.public_ip, mine.vtep_mac, mine.vni)
            key = self.subnets_prefix + subnet_key(choice.subnet)
            lease_id = await self.etcd.grant(self.cfg.lease_ttl)
            if choice.reuse is not None:  # ours from before: overwrite (updateSubnet)
                await self.etcd.put(key, lease.encode(), lease_id)
                return OwnLease(lease, key, lease_id)
            if await self.etcd.create(key, lease.encode(), lease_id):
                return OwnLease(lease, key, lease_id)
            await self.etcd.revoke(lease_id)  # lost a race for that subnet: choose again
            previous = None
        raise AgentError("max retries reached trying to acquire a subnet")

    # --- running -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Watch and renew until ``stop`` is set; AgentError if the agent must stop (its lease
        was deleted, the dataplane failed)."""
        assert self.dataplane is not None
        tasks = {
            asyncio.ensure_future(stop.wait()): "stop",
            asyncio.ensure_future(self._watch_loop()): "watch",
            asyncio.ensure_future(self._renew_loop()): "renew",
            asyncio.ensure_future(self.dataplane.wait_failed()): "dataplane",
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                what = tasks[t]
                if what == "stop":
                    continue
                exc = None if t.cancelled() else t.exception()
                if what == "dataplane" and exc is None:
                    raise AgentError(f"the dataplane failed: {t.result()}")
                if isinstance(exc, AgentError):
                    raise exc  # from the watch: our lease was deleted
                raise AgentError(f"internal error: the {what} task ended: {exc!r}")
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch_loop(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            try:
                await self._watch(self._revision + 1)
            except EtcdError as exc:
                log.warning("etcd watch broke (%s): the tables stay; reconnecting", exc)
            first = True
            while True:
                await self.etcd.failover()
                try:
                    self._revision = await self._resync()
                    log.info(
                        "connected to etcd at %s: resynced %d leases at revision %d",
                        self.etcd.endpoint,
                        len(self.table.leases),
                        self._revision,
                    )
                    backoff = BACKOFF_MIN
                    break
                except EtcdError as exc:
                    if first:
                        log.warning("etcd unreachable (%s): retrying", exc)
                        first = False
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)

    async def _watch(self, start: int) -> None:
        queue: asyncio.Queue[WatchEvent] = asyncio.Queue()

        async def pump() -> None:
            async for ev in self.etcd.watch_prefix(self.subnets_prefix, start):
                queue.put_nowait(ev)
            raise EtcdError(f"etcd {self.etcd.endpoint}: the watch ended")

        reader = asyncio.ensure_future(pump())
        get: asyncio.Future[WatchEvent] | None = None
        try:
            while True:
                get = asyncio.ensure_future(queue.get())
                timeout = RETRY_FAILED if self._failed else None
                done, _ = await asyncio.wait(
                    {get, reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if get not in done:
                    get.cancel()
                    if reader in done:
                        reader.result()  # raises EtcdError
                    await self._reconcile()  # retry what failed
                    continue
                events = [get.result()]
                while not queue.empty():
                    events.append(queue.get_nowait())
                for ev in events:
                    self._on_event(ev)
                    self._revision = max(self._revision, ev.revision)
                await self._reconcile()
        finally:
            pending = [f for f in (reader, get) if f is not None]
            for f in pending:
                f.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _on_event(self, ev: WatchEvent) -> None:
        own = self.own
        if own is not None and ev.key == own.key:
            if ev.kind == "delete":
                raise AgentError(
                    f"our lease {own.lease.subnet} was deleted from etcd: stopping "
                    "(as flanneld does)"
                )
            return  # our own renewal or re-put
        if ev.kind == "put":
            self.table.put(ev.key, ev.value)
        else:
            self.table.delete(ev.key)

    async def _resync(self) -> int:
        """Read every lease, program the difference; our lease re-created if it is gone.
        Returns the revision of the read."""
        kvs, revision = await self.etcd.get_prefix(self.subnets_prefix)
        own = self.own
        if own is not None and not any(k == own.key for k, _ in kvs):
            log.warning("our lease %s is gone from etcd: leasing it again", own.lease.subnet)
            lease_id = await self.etcd.grant(self.cfg.lease_ttl)
            if not await self.etcd.create(own.key, own.lease.encode(), lease_id):
                await self.etcd.revoke(lease_id)
                raise AgentError(f"our subnet {own.lease.subnet} was leased by another node")
            own.lease_id = lease_id
        self.table.reset(kvs)
        self.resyncs += 1
        await self._reconcile()
        return revision

    async def _reconcile(self) -> None:
        assert self.dataplane is not None and self.own is not None
        mine = self.own.lease
        desired = self.table.desired(mine.subnet, mine.public_ip)
        for msg in self.table.new_problems():
            log.warning("ignoring a lease: %s", msg)
        ops = plan(self.peers, desired)
        if not ops:
            self._failed = False
            return
        failed = await self.dataplane.apply(ops)
        apply_result(self.peers, ops, [op for op, _ in failed])
        self._failed = bool(failed)
        for _op, why in failed:
            log.error("programming failed (retried in %g s): %s", RETRY_FAILED, why)
        done = [op for op in ops if all(op is not f for f, _ in failed)]
        if len(done) <= 8:
            for op in done:
                p = op.peer
                log.info("peer %s %s: via %s, VtepMAC %s", p.subnet, op.kind, p.public_ip, p.mac)
        else:
            kinds = {k: sum(op.kind == k for op in done) for k in ("add", "update", "remove")}
            log.info(
                "peers: %d added, %d updated, %d removed; %d programmed",
                kinds["add"],
                kinds["update"],
                kinds["remove"],
                len(self.peers),
            )

    async def _renew_loop(self) -> None:
        cfg = self.cfg
        delay = float(cfg.lease_ttl - cfg.renew_margin)
        retry = float(min(60, max(1, cfg.renew_margin // 4)))
        while True:
            await asyncio.sleep(delay)
            own = self.own
            assert own is not None
            try:
                ttl = await self.etcd.keepalive(own.lease_id)
                if ttl <= 0:  # expired (a long outage): bind the key to a new etcd lease
                    own.lease_id = await self.etcd.grant(cfg.lease_ttl)
                    await self.etcd.put(own.key, own.lease.encode(), own.lease_id)
                    ttl = cfg.lease_ttl
                self.renewals += 1
                log.info("lease %s renewed: expires in %d s", own.lease.subnet, ttl)
                delay = float(max(1, ttl - cfg.renew_margin))
            except EtcdError as exc:
                log.warning("renewing the lease failed (retried in %g s): %s", retry, exc)
                delay = retry

    # --- stop ----------------------------------------------------------------------------------

    async def close(self, release: bool | None = None) -> None:
        """Remove the device and its tables; revoke our lease if ``release`` (default: the
        config's ``release_on_exit``). Idempotent."""
        release = self.cfg.release_on_exit if release is None else release
        own, self.own = self.own, None
        if release and own is not None:
            try:
                await self.etcd.revoke(own.lease_id)
                log.info("lease %s released", own.lease.subnet)
            except EtcdError as exc:
                log.warning("could not release the lease %s: %s", own.lease.subnet, exc)
        dp, self.dataplane = self.dataplane, None
        if dp is not None:
            try:
                await dp.close()
            except Exception as exc:
                log.warning("cleaning up the dataplane: %s", exc)
        await self.etcd.close()

    def describe(self) -> str:
        """One line: the lease, the device, the peers."""
        own, dev = self.own, self.device
        if own is None or dev is None:
            return "not started"
        lease = own.lease
        return (
            f"flannel: lease {lease.subnet} PublicIP {lease.public_ip} VtepMAC {lease.vtep_mac};"
            f" {self.cfg.backend} dataplane {dev.name} mtu {dev.mtu}; peers {len(self.peers)};"
            f" etcd {self.etcd.endpoint} prefix {self.cfg.etcd_prefix};"
            f" subnet file {self.cfg.subnet_file}"
        )
