"""What the agent needs from a dataplane, and the Linux kernel's vxlan device as one.

A ``Dataplane`` owns the ``flannel.<VNI>`` device: ``start`` creates it (its MAC goes into the
lease), ``set_subnet`` puts ``<subnet>.0/32`` on it, ``apply`` carries out the agent's
operations (registry.Op), ``close`` removes everything. Two implementations: ``KernelDataplane``
below (flanneld's own vxlan backend, through pyroute2) and ``vxlanpy_backend.VxlanpyDataplane``
(a running ``vxlanpy.tunnel.Vtep``).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from . import netlink
from .lease import ENCAP_OVERHEAD, NetworkConfig
from .registry import Op

__all__ = ["DeviceInfo", "Dataplane", "KernelDataplane", "device_mtu"]


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    mac: str
    mtu: int

    def describe(self) -> str:
        return f"{self.name} mac {self.mac} mtu {self.mtu}"


class Dataplane(Protocol):
    kind: str  # "vxlanpy" or "kernel"

    async def start(self) -> DeviceInfo:
        """Create and bring up the device; raise an exception with a one-line message."""
        ...

    async def set_subnet(self, subnet: ipaddress.IPv4Network) -> None:
        """Put ``<subnet>.0/32`` on the device."""
        ...

    async def apply(self, ops: Sequence[Op]) -> list[tuple[Op, str]]:
        """Carry out ``ops``; return the failed ones with the reason."""
        ...

    async def wait_failed(self) -> BaseException:
        """Return when the dataplane fails by itself (e.g. its device was deleted)."""
        ...

    async def close(self) -> None:
        """Remove the device and everything on it; idempotent."""
        ...


def device_mtu(config: NetworkConfig, underlay: netlink.Underlay) -> int:
    """flanneld's device MTU: ``Backend.MTU`` (default: the underlay's) minus 50."""
    return (config.mtu or underlay.mtu) - ENCAP_OVERHEAD


class KernelDataplane:
    """flanneld's vxlan backend: a kernel vxlan device without learning, tables by netlink."""

    kind = "kernel"

    def __init__(self, config: NetworkConfig, underlay: netlink.Underlay) -> None:
        self.config = config
        self.underlay = underlay
        self.index = 0
        self._created = False
        self._forever: asyncio.Future[BaseException] | None = None

    async def start(self) -> DeviceInfo:
        c = self.config
        mtu = device_mtu(c, self.underlay)
        self.index, mac = await asyncio.to_thread(
            netlink.create_vxlan,
            c.device,
            vni=c.vni,
            underlay=self.underlay,
            port=c.port,
            mtu=mtu,
            gbp=c.gbp,
            learning=c.learning,
        )
        self._created = True
        return DeviceInfo(c.device, mac, mtu)

    async def set_subnet(self, subnet: ipaddress.IPv4Network) -> None:
        self.index = await asyncio.to_thread(netlink.set_address, self.config.device, subnet)

    async def apply(self, ops: Sequence[Op]) -> list[tuple[Op, str]]:
        if not ops:
            return []
        return await asyncio.to_thread(netlink.program, self.index, list(ops), fdb=True)

    async def wait_failed(self) -> BaseException:
        self._forever = asyncio.get_running_loop().create_future()
        return await self._forever

    async def close(self) -> None:
        if self._created:
            self._created = False
            await asyncio.to_thread(netlink.delete_link, self.config.device)
