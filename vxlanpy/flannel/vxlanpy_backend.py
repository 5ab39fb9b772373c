"""The vxlanpy dataplane for the flannel agent: a running ``Vtep`` serving the flannel VNI.

The TAP is named ``flannel.<VNI>``, learns nothing and floods nowhere (no flood list), as
flanneld's kernel device. Per peer, the FDB entry ``VtepMAC -> PublicIP`` goes into the VTEP's
own FDB through its Python API (``Vtep.fdb_update``), and the kernel gets the neighbour entry
and the route on the TAP (pyroute2), so the host routes into the TAP exactly as into a kernel
``flannel.1``. A control socket (``vxlanpy-tunnel fdb show`` etc.) is served if a path is given.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import replace

from ..config import SegmentSpec, VtepConfig
from ..control import ControlServer
from ..fdb import FdbError, FdbNotFound
from ..tunnel import Vtep
from . import netlink
from .dataplane import DeviceInfo, device_mtu
from .lease import NetworkConfig
from .registry import Op

__all__ = ["VxlanpyDataplane"]

log = logging.getLogger("vxlanpy")


class VxlanpyDataplane:
    kind = "vxlanpy"

    def __init__(
        self,
        config: NetworkConfig,
        underlay: netlink.Underlay,
        *,
        vtep: VtepConfig | None = None,
        control: str | None = None,
    ) -> None:
        """``vtep``: data-path settings (offload, fast_path, busy_poll, ...); its segments and
        addresses are replaced by the flannel ones. ``control``: a control socket path."""
        if config.gbp:
            raise ValueError("Backend.GBP is not supported by the vxlanpy dataplane")
        self.config = config
        self.underlay = underlay
        seg = SegmentSpec(
            vni=config.vni,
            tap=config.device,
            mtu=device_mtu(config, underlay),
            learning=False,
            ageing=0.0,
        )
        base = vtep or VtepConfig(segments=[seg])
        self.vtep_config = replace(
            base, segments=[seg], local=str(underlay.ip), dstport=config.port, dev=underlay.dev
        )
        self.vtep: Vtep | None = None
        self.control_path = control
        self._server: ControlServer | None = None
        self._index = 0

    async def start(self) -> DeviceInfo:
        vtep = Vtep(self.vtep_config)
        await vtep.start()  # VtepError with the reason
        self.vtep = vtep
        if self.control_path:
            self._server = ControlServer(vtep, self.control_path)
            try:
                await self._server.start()
            except BaseException:
                await self.close()
                raise
        tap = vtep.taps[self.config.vni]
        return DeviceInfo(tap.name, tap.mac.hex(":"), tap.mtu)

    async def set_subnet(self, subnet: ipaddress.IPv4Network) -> None:
        self._index = await asyncio.to_thread(netlink.set_address, self.config.device, subnet)

    async def apply(self, ops: Sequence[Op]) -> list[tuple[Op, str]]:
        if not ops or self.vtep is None:
            return []
        vni = self.config.vni
        failed: list[tuple[Op, str]] = []
        kernel: list[Op] = []
        for op in ops:  # the VTEP's FDB first: in place before the route sends anything
            p = op.peer
            try:
                if op.kind == "remove":
                    try:
                        self.vtep.fdb_update("del", vni, p.mac)
                    except FdbNotFound:
                        pass
                else:
                    self.vtep.fdb_update("replace", vni, p.mac, str(p.public_ip))
            except (FdbError, ValueError) as exc:
                failed.append((op, f"{op.kind} {p.subnet}: fdb: {exc}"))
                continue
            if op.kind != "update":
                kernel.append(op)
        if kernel:
            failed += await asyncio.to_thread(netlink.program, self._index, kernel, fdb=False)
        return failed

    async def wait_failed(self) -> BaseException:
        assert self.vtep is not None
        await self.vtep.wait_stopped()
        return self.vtep.failure or RuntimeError("the VTEP stopped")

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None
        if self.vtep is not None:
            await self.vtep.close()  # the TAP goes, and the routes and neighbours with it
