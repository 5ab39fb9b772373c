"""The asyncio driver and the public async API: :class:`Vtep`.

The driver only moves bytes: it reads TAP frames and UDP datagrams in batches, hands each batch
to the engine, writes what the engine asks for, and runs the ageing timer. Example::

    import asyncio, vxlanpy
    from vxlanpy.tunnel import Vtep
    from vxlanpy.config import VtepConfig, SegmentSpec

    async def main() -> None:
        cfg = VtepConfig(local="198.18.0.1",
                         segments=[SegmentSpec(vni=42, tap="vx42", address="198.19.0.1/24",
                                               remotes=["198.18.0.2"])])
        async with Vtep(cfg) as vtep:
            async for ev in vtep.events():
                print(ev)

    asyncio.run(main())
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import AsyncGenerator
from typing import Any

from . import datapath as datapath_mod
from . import render, tables, trace, trace_live
from . import stats as stats_mod
from .abi import MAX_BATCH
from .batch import DEFAULT_BATCH, FrameBatch
from .config import VtepConfig
from .datapath import Datapath
from .dpthread import Readers
from .engine import Engine, Segment
from .events import Event, PeerMismatch
from .fdb import FdbEntry
from .io.netlink import device_for_address, route_device
from .io.peersock import PeerSocket, ifindexes, open_watch
from .io.tap import Device, Devices, DeviceSpec, KernelTaps, TapError, TapGone
from .io.tgso import TunnelGsoControl, TunnelGsoError
from .io.udp import TransportError, UdpTransport
from .peers import BatchSizes
from .peerwatch import PeerWatch
from .pumps import RX_DRAINED, RX_MORE, RX_PENDING, Pumps, RxPump
from .wire import ETH_HLEN, VXLAN_HLEN, parse_mac

__all__ = ["Vtep", "VtepError", "install_uvloop"]

log = logging.getLogger("vxlanpy")

_READ_BUDGET = 8
_PUMP_ROUNDS = 16  # batches one C pump call may move before it returns to the loop
MAX_UDP_PAYLOAD = 65535 - VXLAN_HLEN
MAX_GSO_FRAME = 65535 + ETH_HLEN + 4
GRO_SPILL = 128  # receive slots for the datagrams of a split UDP GRO receive (UDP_MAX_SEGMENTS)


class VtepError(Exception):
    """The VTEP could not start or stopped on an error; the message says why."""


def install_uvloop() -> str:
    """Make uvloop the event loop policy if it is installed; return the loop name in use."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


class Vtep:
    """A running VTEP: one UDP transport, one TAP per segment, one engine.

    Use as ``async with Vtep(config) as vtep:``. Table changes take effect on the next frame.
    """

    def __init__(
        self, config: VtepConfig, *, batch: int = DEFAULT_BATCH, devices: Devices | None = None
    ) -> None:
        """``devices``: where the TAPs come from (default: the kernel's; io/memory.py has
        in-memory doubles for tests without root)."""
        self.config = config.validate()
        self.engine = Engine(
            dstport=config.dstport,
            srcport=config.srcport,
            strict=config.strict,
            outer=config.outer(),
        )
        self.devices: Devices = devices or KernelTaps()
        self.taps: dict[int, Device] = {}
        self.transport: UdpTransport | None = None
        self.failure: BaseException | None = None
        self.events_lost = 0
        self._batch_size = batch
        self._subscribers: list[asyncio.Queue[Event]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._stopped = asyncio.Event()
        self._tx_batch: FrameBatch | None = None
        self._rx_batch: FrameBatch | None = None
        self._rx_sources: list[str] = []
        self.pumps: Pumps | None = None  # the C datapath's pumps, when it forwards
        self._poll_fds: list[int] = []
        self._rx_spill = 0  # receive slots kept for split UDP GRO receives (0: no UDP_GRO)
        self._tap_dropped: dict[str, int] = {}  # the TAPs' tx_dropped when they were closed
        self.tgso = TunnelGsoControl(config.tunnel_gso, self._tgso_unfit())  # io/tgso.py
        self.batches = {"tx": BatchSizes(), "rx": BatchSizes()}  # the Python pumps' reads
        self._capture: object | None = None  # run --capture: the file being written
        self.peer_watch: PeerSocket | None = None  # peerwatch.py: once-per-peer mismatches
        self._closing = False  # _teardown has begun
        self._readers = Readers(self, _PUMP_ROUNDS)  # the datapath thread or the loop's readers

    # --- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Vtep:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Create the TAPs and sockets and start forwarding. Raises VtepError."""
        if not self.devices.privileged():
            raise VtepError("need root or CAP_NET_ADMIN + CAP_NET_RAW to create TAPs and sockets")
        self._loop = asyncio.get_running_loop()
        # netlink (pyroute2) runs its own loop: do the blocking set-up in a worker thread
        max_frame = await asyncio.to_thread(self._setup)
        assert self.transport is not None
        # With offloads the TAP hands over TCP super-frames of up to 64 KiB; the transport cuts
        # them into MTU-sized chunks (at most max_frame bytes each).
        tx_max = MAX_GSO_FRAME if self.config.offload else max_frame
        self._tx_batch = FrameBatch(self._batch_size, tx_max)
        # Receive slots hold any UDP datagram: a kernel peer over veth hands over tunnel-GSO
        # super-packets (up to 64 KiB) that the socket does not segment for us.
        # With UDP_GRO, the C pump splits the receives it cannot coalesce into GRO_SPILL more.
        fast = self.config.fast_path and datapath_mod.available() and self._batch_size <= MAX_BATCH
        gro = self.config.gro and self.config.offload
        if fast and gro and self._batch_size + GRO_SPILL <= MAX_BATCH:
            if self.transport.enable_gro():
                self._rx_spill = GRO_SPILL
            else:
                log.info("UDP_GRO refused by the kernel: each datagram is received on its own")
        elif fast and gro:
            log.info("batch of %d: no room for UDP GRO's spill slots, not used", self._batch_size)
        self._rx_batch = FrameBatch(self._batch_size + self._rx_spill, MAX_UDP_PAYLOAD)
        if fast:
            self._attach_datapath(max_frame)
        else:
            self.tgso.leave_out("needs the C fast path and offloads")
        loop = self._loop
        self.engine.on_tracing = lambda _on: self._readers.sync()
        try:
            self._capture = trace_live.start_capture(self)
        except OSError as exc:
            self._teardown()
            raise VtepError(f"cannot write the capture {self.config.capture}: {exc}") from exc
        self._readers.sync()
        self.transport.watch_errors(loop, self._publish)  # ICMP errors: counted, an event
        cfg = self.config
        if cfg.peer_watch:
            gbp = any(s.gbp for s in cfg.segments)
            v6 = cfg.family() == 6
            taken = not v6 or cfg.profile == "ovs"  # peers that take zero checksums
            taps = ifindexes(t.name for t in self.taps.values())  # the overlay: not watched
            w = PeerWatch(v6, cfg.dstport, cfg.zero_csum_tx(), gbp, zeros_taken=taken, devices=taps)
            self.peer_watch = open_watch(w, self._mismatch)
            if self.peer_watch is not None:
                self.peer_watch.start(loop)

    def _mismatch(self, ev: PeerMismatch) -> None:
        log.warning(
            "peer %s expects other settings (%s): %s", ev.remote, ", ".join(ev.kinds), ev.hint
        )
        self._publish(ev)

    def _attach_datapath(self, max_frame: int) -> None:
        """Forward in C what the engine installs (fast path); the engine gets the rest."""
        dp = Datapath(max_frame)
        self.engine.attach_datapath(dp)
        for vni, tap in self.taps.items():
            dp.set_device(vni, tap.fd, tap.vnet, tap.mtu)  # after attach: the segment is served
        assert self.transport is not None
        self.transport.on_port = dp.set_port_fd
        pumps = Pumps(dp)
        if self.config.send_thread:
            try:
                pumps.start_sender()
            except OSError as e:
                log.warning("%s; super-frames are sent from the event loop's thread", e)
        self.pumps = pumps
        self._poll_fds = [self.transport.fileno(), *(t.fd for t in self.taps.values())][:16]
        assert self._loop is not None
        self.tgso.attach(dp, self._loop)

    def _setup(self) -> int:
        """Create TAPs, segments and the transport; return the largest frame to expect."""
        cfg = self.config
        first_remote = next(
            (r for s in cfg.segments for r in [*s.remotes, s.group or ""] if r), None
        )
        try:
            base = self.devices.underlay_mtu(cfg.local, first_remote, cfg.dev) or 1500
            max_frame = ETH_HLEN + 4
            for spec in cfg.segments:
                mtu = spec.mtu or base - cfg.overhead()
                if mtu < 68:
                    raise VtepError(f"TAP MTU {mtu} is too small (underlay MTU {base})")
                max_frame = max(max_frame, mtu + ETH_HLEN + 4)
                addr = ipaddress.ip_interface(spec.address) if spec.address else None
                mac = parse_mac(spec.mac) if spec.mac else None
                tap = self.devices.open(
                    DeviceSpec(
                        spec.tap_name, mtu, addr, spec.bridge, mac, cfg.offload, cfg.tap_queue
                    )
                )
                self.taps[spec.vni] = tap
                self.engine.add_segment(spec.segment_config(local_mac=tap.mac, allow=cfg.allow))
            groups = {s.group for s in cfg.segments if s.group}
            if len(groups) > 1:
                raise VtepError("one multicast group per VTEP is supported")
            self.tgso.setup(lambda: self._underlay_dev(first_remote))
            self.transport = UdpTransport(
                port=cfg.dstport,
                local=cfg.local,
                family=socket.AF_INET6 if cfg.family() == 6 else socket.AF_INET,
                group=next(iter(groups), None),
                dev=cfg.dev,
                srcport=cfg.srcport,
                outer=self.engine.outer,
                zero_csum_rx=cfg.udp6zerocsumrx,
                chunk_max_frame=max_frame,
            )
        except (TapError, TransportError, TunnelGsoError, OSError, ValueError) as exc:
            self._teardown()
            raise VtepError(str(exc)) from exc
        except BaseException:
            self._teardown()
            raise
        return max_frame

    async def close(self) -> None:
        """Stop forwarding, remove the TAPs, close the sockets. Idempotent."""
        self._teardown()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        """Return when the VTEP stops (closed, or failed: see ``failure``)."""
        await self._stopped.wait()

    def tap_queue_dropped(self) -> dict[str, int]:
        """Each TAP's tx_dropped: frames the kernel could not queue towards vxlanpy (as they
        were when the TAPs were closed, once they are)."""
        live = [t.name for t in self.taps.values() if not t.closed]
        return {**self._tap_dropped, **stats_mod.device_tx_dropped(live)}

    def _tgso_unfit(self) -> str | None:
        """Why tunnel GSO is left out whatever the host (None: it is not)."""
        if not isinstance(self.devices, KernelTaps):
            return "the devices are not the kernel's TAPs"
        if self.config.profile == "ovs":  # over a veth, OVS would read 64 KiB packets: dropped
            return "profile ovs: Open vSwitch's userspace datapath takes datagrams"
        return self.config.tunnel_gso_unfit()

    def _underlay_dev(self, remote: str | None) -> str:
        """The underlay device (``dev``, else the one holding ``local``, else the route's)."""
        cfg = self.config
        dev = cfg.dev or (device_for_address(cfg.local) if cfg.local else None)
        if dev is None and remote:
            dev = route_device(remote)
        if dev is None:
            raise TunnelGsoError("tunnel GSO: no underlay device (give --dev or --local)")
        return dev

    @property
    def stopping(self) -> bool:
        """True from the start of closing (or failing) on: ``_stopped`` is set after it."""
        return self._closing

    @property
    def datapath_thread(self) -> bool:
        """True while the C datapath thread polls the TAPs and the socket (dpthread.py); once
        closed, whether it did until then."""
        return self._readers.threaded or self._readers.at_close

    def _teardown(self) -> None:
        self._closing = True
        self._readers.close()
        self.engine.on_tracing = None
        trace_live.stop_capture(self, self._capture)
        self._capture = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.tgso.close(self.engine.datapath)
        if self.peer_watch is not None:
            self.peer_watch.close()
            self.peer_watch = None
        self._tap_dropped.update(self.tap_queue_dropped())
        for tap in self.taps.values():
            tap.close()
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        log.error("%s", exc)
        self.failure = exc
        self._teardown()
        self._stopped.set()

    # --- the data path ---------------------------------------------------------------------------

    def _on_tap(self, vni: int) -> None:
        tap = self.taps[vni]
        batch = self._tx_batch
        transport = self.transport
        assert batch is not None and transport is not None and self._loop is not None
        if self.pumps is not None:
            self._pump_tap(vni, tap, batch)
            return
        engine = self.engine
        for _ in range(_READ_BUDGET):
            batch.clear()
            try:
                n = tap.read_batch(batch)
            except TapGone as exc:
                self._fail(exc)
                return
            if n == 0:
                break
            self.batches["tx"].add(n)
            engine.handle_frames(vni, batch, self._loop.time())
            engine.not_sent(vni, *transport.send_datagrams(batch, engine.datagrams_to_send()))
            engine.peers.not_sent(transport.unsent_by_host)
            self._write_device()
            if n < batch.capacity:
                break
        self._after_work()

    def _pump_tap(
        self, vni: int, tap: Device, batch: FrameBatch, first: tuple[int, int] | None = None
    ) -> None:
        """TAP -> wire through the C pump; the engine handles the upcalls of each batch
        (``first``: what the datapath thread's pump returned, in ``batch``)."""
        pumps, engine, transport = self.pumps, self.engine, self.transport
        assert pumps is not None and transport is not None and self._loop is not None
        engine.sync_datapath()
        upcalls = False
        for _ in range(_READ_BUDGET):
            if first is not None:
                (n, up), first = first, None
            else:
                n, up = pumps.tx(vni, batch, 1 if engine.tracer is not None else _PUMP_ROUNDS)
            if n < 0:
                self._fail(tap.gone(-n))
                return
            if engine.tracer is not None and n > 0:  # what C did with this batch
                trace.fast_tx(engine, vni, batch, n)
            if up:
                upcalls = True
                act = batch.action
                slots = [i for i in range(n) if act[i] < 0]
                engine.handle_frames(vni, batch, self._loop.time(), slots)
                engine.not_sent(vni, *transport.send_datagrams(batch, engine.datagrams_to_send()))
                engine.peers.not_sent(transport.unsent_by_host)
                self._write_device()
                if self._stopped.is_set():
                    return
                engine.sync_datapath()
            if n < batch.capacity:
                break
        self._settle(upcalls)

    def _settle(self, upcalls: bool) -> None:
        """After a pump: events and timers if the engine did anything; then busy-poll."""
        if upcalls:
            self._after_work()
        pumps, usec = self.pumps, self.config.busy_poll
        # (with the datapath thread, that thread spins itself)
        if usec and pumps is not None and self._poll_fds and not self._readers.threaded:
            pumps.spin(self._poll_fds, usec)

    def _pump_udp(self, batch: FrameBatch, first: RxPump | None = None) -> int:
        """Wire -> TAP through the C pump; the engine handles the upcalls of each batch
        (``first``: what the datapath thread's pump returned, in ``batch``). Returns
        RX_PENDING if received datagrams still wait in the batch (without the datapath
        thread, the loop comes back to them by itself)."""
        pumps, engine, transport = self.pumps, self.engine, self.transport
        assert pumps is not None and transport is not None and self._loop is not None
        engine.sync_datapath()
        fd = transport.fileno()
        upcalls = False
        more: int = RX_DRAINED
        for _ in range(_READ_BUDGET):
            now = self._loop.time()
            rounds = (
                1 if engine.tracer is not None else _PUMP_ROUNDS
            )  # traced: C returns every batch
            if first is not None:
                (n, up, gone, more), first = first, None
            else:
                n, up, gone, more = pumps.rx(fd, batch, now, rounds, self._rx_spill)
            if n < 0:
                if gone >= 0:
                    self._fail(self.taps[gone].gone(-n))
                    return RX_DRAINED
                transport.count_error(-n)  # an ICMP report surfaced on the socket
                more = RX_MORE
                continue
            if engine.tracer is not None and n > 0:
                trace.fast_rx(engine, batch, batch.order[:n])
            if up:
                upcalls = True
                engine.handle_upcalls(batch, now)
                self._write_device(batch)
                if self._stopped.is_set():
                    return RX_DRAINED
                engine.sync_datapath()
            if more == RX_DRAINED:
                break
        if more == RX_PENDING:
            # datagrams wait in the batch and the socket may never become readable again:
            # come back to them next, without busy-polling first (dpthread.py does, for
            # the datapath thread's)
            if not self._readers.threaded:
                self._loop.call_soon(self._resume_udp)
            if upcalls:
                self._after_work()
            return RX_PENDING
        self._settle(upcalls)
        return more

    def _resume_udp(self) -> None:
        if not self._stopped.is_set() and self.transport is not None:
            self._on_udp()

    def _on_udp(self) -> None:
        batch = self._rx_batch
        transport = self.transport
        assert batch is not None and transport is not None and self._loop is not None
        if self.pumps is not None:
            self._pump_udp(batch)
            return
        sources = self._rx_sources
        engine = self.engine
        for _ in range(_READ_BUDGET):
            batch.clear()
            sources.clear()
            n = transport.recv_batch(batch, sources)
            if n == 0:
                break
            self.batches["rx"].add(n)
            engine.handle_datagrams(batch, sources, self._loop.time())
            self._write_device(batch)
            if n < batch.capacity:
                break
        self._after_work()

    def _write_device(self, batch: FrameBatch | None = None) -> None:
        """Write the engine's frames: those still in ``batch`` (by slot) in one C loop per TAP,
        copies (ARP-proxy replies) one by one."""
        taps = self.taps
        by_tap: dict[int, list[int]] = {}
        try:
            for f in self.engine.frames_to_device():
                tap = taps.get(f.vni)
                if tap is None:
                    continue
                if batch is not None and f.slot >= 0:
                    by_tap.setdefault(f.vni, []).append(f.slot)
                else:
                    tap.write(f.frame)
            if batch is not None:
                for vni, slots in by_tap.items():
                    taps[vni].write_slots(batch, slots)
        except TapGone as exc:
            self._fail(exc)

    def _after_work(self) -> None:
        self._dispatch_events()
        self._arm_timer()

    def _dispatch_events(self) -> None:
        for ev in self.engine.events():
            self._publish(ev)

    def _publish(self, ev: Event) -> None:
        for q in self._subscribers:
            try:
                q.put_nowait(ev)
            except asyncio.QueueFull:
                self.events_lost += 1

    def _arm_timer(self) -> None:
        t = self.engine.get_timer()
        if t is None or self._loop is None or self._stopped.is_set():
            return
        if self._timer_at is not None and self._timer_at <= t:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = t
        self._timer = self._loop.call_at(t, self._on_timer)

    def _on_timer(self) -> None:
        assert self._loop is not None
        self._timer = None
        self._timer_at = None
        self.engine.handle_timer(self._loop.time())
        self._after_work()

    # --- events ----------------------------------------------------------------------------------

    def events(self, maxsize: int = 10000) -> AsyncGenerator[Event, None]:
        """Events as they happen: the engine's (learned, moved, aged, l2/l3 miss, dropped) and
        the transport's (icmp, mismatch). Subscribed from this call on, not from the first
        iteration: called before :meth:`start`, nothing the start itself reports is missed."""
        q: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self._subscribers.append(q)
        return self._drain(q)

    async def _drain(self, q: asyncio.Queue[Event]) -> AsyncGenerator[Event, None]:
        stop = asyncio.ensure_future(self._stopped.wait())
        get: asyncio.Future[Event] | None = None
        try:
            while True:
                get = asyncio.ensure_future(q.get())
                await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    return
                yield get.result()
        finally:  # also when the consumer is cancelled: no task left behind
            stop.cancel()
            if get is not None:
                get.cancel()
            self._subscribers.remove(q)

    # --- tables and counters -----------------------------------------------------------------

    def segment(self, vni: int) -> Segment:
        try:
            return self.engine.segment(vni)
        except KeyError:
            raise VtepError(f"VNI {vni} is not configured") from None

    def fdb_update(
        self,
        op: str,
        vni: int,
        mac: str,
        ip: str | None = None,
        *,
        port: int | None = None,
        remote_vni: int | None = None,
    ) -> None:
        """``op`` is add, append, replace or del (as ``bridge fdb``); ``ip`` optional for del."""
        tables.fdb_update(
            self.segment(vni).fdb, self.config.family(), op, mac, ip, port, remote_vni
        )
        self._arm_timer()

    def neigh_update(self, op: str, vni: int, ip: str, mac: str | None = None) -> None:
        """``op`` is add, replace or del (as ``ip neigh``)."""
        tables.neigh_update(self.segment(vni).neigh, op, ip, mac)

    def fdb_entries(self, vni: int) -> list[FdbEntry]:
        assert self._loop is not None
        seg = self.segment(vni)
        self.engine.refresh_from_datapath(vni)
        return seg.fdb.entries(self._loop.time())

    def neigh_entries(self, vni: int) -> list[tuple[str, bytes]]:
        return self.segment(vni).neigh.entries()

    @property
    def udp_gro(self) -> bool:
        """True if the receiving socket has UDP_GRO on (the C receive pump coalesces)."""
        return self._rx_spill > 0

    def stats(self) -> dict[str, Any]:
        """Counters per VNI, drops before a VNI was known, socket and TAP errors (stats.py)."""
        return stats_mod.vtep_stats(self)

    def describe(self) -> str:
        """One line: what this VTEP listens on and serves."""
        return render.listening(self.config, {vni: t.mtu for vni, t in self.taps.items()})
