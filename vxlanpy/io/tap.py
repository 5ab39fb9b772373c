"""A TAP device (python-pytun, IFF_TAP | IFF_NO_PI) read and written in batches.

With offloads (IFF_VNET_HDR) the kernel hands over TCP super-frames and partial checksums; the
virtio-net header that says so is read and written below this class (io/batchio.py): a read
gives frames whose offload state is in the batch (``gso_type``, ``gso_size``, ``offload``;
partial checksums of plain frames already completed), a write gives an oversized, verified TCP
frame the GSO header the kernel needs. As wireguard-go's ``tun.Device`` hides its offloads.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
from dataclasses import dataclass
from typing import Protocol

import pytun

from ..abi import VNET_HLEN
from ..batch import FrameBatch
from . import batchio
from .netlink import (
    NetlinkError,
    configure_link,
    has_net_admin,
    link_exists,
    link_mac,
    underlay_mtu,
)

__all__ = [
    "Tap",
    "TapError",
    "TapGone",
    "gone_error",
    "FdDevice",
    "Device",
    "DeviceSpec",
    "Devices",
    "KernelTaps",
]

# virtio-net header (IFF_VNET_HDR): what the kernel tells us about each frame it hands over
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
_ZERO_HDR = bytes(VNET_HLEN)

# errnos that mean the device is gone (deleted under us, or the fd was detached)
_GONE = {errno.EBADFD, errno.EIO, errno.ENODEV, errno.ENXIO, errno.EBADF}


class TapError(Exception):
    """The TAP could not be created or configured; the message says why."""


class TapGone(TapError):
    """The TAP stopped working (deleted with ``ip link del``, say)."""


class FdDevice:
    """Frame I/O on a device's file descriptor (a TAP's, or a test double's): one frame per
    read or write, the virtio-net header handled by io/batchio.py when ``vnet`` is set.
    Subclasses set ``name``, ``fd``, ``vnet``, ``mtu``, ``mac`` and ``closed``, and close."""

    name: str
    fd: int
    vnet: int
    mtu: int
    mac: bytes
    closed: bool
    write_errors = 0  # frames the device refused
    checksums_completed = 0  # partial checksums of frames read, completed

    def close(self) -> None:
        raise NotImplementedError

    def read_batch(self, batch: FrameBatch) -> int:
        """Read frames into ``batch`` (from slot ``batch.count``) until EAGAIN or full.

        Returns the number read. Raises TapGone if the device went away.
        """
        n, completed = batchio.backend.tap_read(self.fd, self.vnet, batch)
        self.checksums_completed += completed
        if n < 0:
            raise self.gone(-n)
        return n

    def write(self, frame: bytes | memoryview) -> bool:
        """Write one frame; False (and counted) if the device refused it."""
        try:
            if self.vnet:
                os.writev(self.fd, (_ZERO_HDR, frame))  # no offload metadata: a plain frame
            else:
                os.write(self.fd, frame)
            return True
        except BlockingIOError:
            self.write_errors += 1
            return False
        except OSError as exc:
            if exc.errno in _GONE:
                raise self.gone(exc.errno) from exc
            self.write_errors += 1
            return False

    def write_slots(self, batch: FrameBatch, slots: list[int]) -> int:
        """Write the frames in ``slots`` of ``batch`` in one C loop; refused ones are counted.

        With offloads, a TCP super-frame larger than the MTU (a kernel peer's tunnel-GSO packet
        arrives whole) goes in as a GSO frame, so the kernel can still forward it (bridge)."""
        written, refused = batchio.backend.tap_write(self.fd, self.vnet, self.mtu, batch, slots)
        self.write_errors += refused
        if written < 0:
            raise self.gone(-written)
        return written

    def gone(self, err: int | None) -> TapGone:
        """The error for an I/O call on the device that failed with ``err`` (one of _GONE)."""
        return gone_error(self.name, err)


class Tap(FdDevice):
    """One TAP device. ``read_batch`` fills a FrameBatch until the device would block."""

    def __init__(
        self,
        name: str,
        *,
        mtu: int,
        address: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None = None,
        bridge: str | None = None,
        mac: bytes | None = None,
        offload: bool = False,
        queue: int | None = None,
    ) -> None:
        if not name or len(name) > 15 or "/" in name or " " in name:
            raise TapError(f"invalid interface name {name!r} (1-15 characters, no '/' or space)")
        if link_exists(name):
            raise TapError(f"interface {name} exists already")
        flags = pytun.IFF_TAP | pytun.IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
        try:
            self._dev = pytun.TunTapDevice(name=name, flags=flags)
        except pytun.Error as exc:
            raise TapError(f"cannot create TAP {name}: {exc}") from exc
        self.name = str(self._dev.name)
        self.fd = int(self._dev.fileno())
        self.closed = False
        # With offloads the kernel hands over TCP super-frames (TSO) and leaves checksums partial;
        # every frame, read or written, starts with a virtio-net header.
        self.vnet = VNET_HLEN if offload else 0
        try:
            os.set_blocking(self.fd, False)
            if offload:
                fcntl.ioctl(
                    self.fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
                )
            configure_link(
                self.name, mtu=mtu, address=address, bridge=bridge, mac=mac, txqlen=queue
            )
            self.mac = link_mac(self.name)
        except (NetlinkError, OSError) as exc:
            self.close()
            raise TapError(str(exc)) from exc
        self.mtu = mtu

    def close(self) -> None:
        """Close the fd; a non-persistent TAP disappears with it."""
        if not self.closed:
            self.closed = True
            try:
                self._dev.close()
            except Exception:
                pass


def gone_error(name: str, err: int | None) -> TapGone:
    """The error for an I/O call on the TAP ``name`` that failed with ``err``."""
    return TapGone(f"TAP {name} is gone ({os.strerror(err or errno.EIO)})")


Device = FdDevice  # what the driver needs of a segment's device: a Tap, or a test double


@dataclass(frozen=True)
class DeviceSpec:
    """A segment's device as the VTEP wants it."""

    name: str
    mtu: int
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None = None
    bridge: str | None = None
    mac: bytes | None = None
    offload: bool = False
    queue: int | None = None  # the TAP's txqueuelen (frames), None: the kernel's default


class Devices(Protocol):
    """Where a VTEP gets its devices and the underlay's MTU from."""

    def privileged(self) -> bool:
        """True if this process may create the devices (else the VTEP refuses to start)."""
        ...

    def underlay_mtu(
        self, local: str | None, remote: str | None, dev: str | None
    ) -> int | None: ...

    def open(self, spec: DeviceSpec) -> FdDevice:
        """The device ``spec`` describes, created and up; TapError if it cannot be."""
        ...


class KernelTaps:
    """Real TAP devices of the kernel (needs CAP_NET_ADMIN)."""

    def privileged(self) -> bool:
        return has_net_admin()

    def underlay_mtu(self, local: str | None, remote: str | None, dev: str | None) -> int | None:
        return underlay_mtu(local, remote, dev)

    def open(self, spec: DeviceSpec) -> FdDevice:
        return Tap(
            spec.name,
            mtu=spec.mtu,
            address=spec.address,
            bridge=spec.bridge,
            mac=spec.mac,
            offload=spec.offload,
            queue=spec.queue,
        )
