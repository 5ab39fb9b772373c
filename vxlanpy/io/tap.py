"""A TAP device (python-pytun, IFF_TAP | IFF_NO_PI) read and written in batches."""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import struct

import pytun

from .. import fastio
from ..batch import FrameBatch
from .netlink import NetlinkError, configure_link, link_exists, link_mac

__all__ = ["Tap", "TapError", "TapGone", "VNET_HDR_LEN", "GSO_TCPV4", "GSO_TCPV6", "NEEDS_CSUM"]

# virtio-net header (IFF_VNET_HDR): what the kernel tells us about each frame it hands over
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
VNET_HDR = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_off
VNET_HDR_LEN = VNET_HDR.size
NEEDS_CSUM = 0x01
GSO_TCPV4, GSO_TCPV6, GSO_ECN = 1, 4, 0x80
_ZERO_HDR = bytes(VNET_HDR_LEN)

# errnos that mean the device is gone (deleted under us, or the fd was detached)
_GONE = {errno.EBADFD, errno.EIO, errno.ENODEV, errno.ENXIO, errno.EBADF}


class TapError(Exception):
    """The TAP could not be created or configured; the message says why."""


class TapGone(TapError):
    """The TAP stopped working (deleted with ``ip link del``, say)."""


class Tap:
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
        self.vnet = VNET_HDR_LEN if offload else 0
        try:
            os.set_blocking(self.fd, False)
            if offload:
                fcntl.ioctl(
                    self.fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
                )
            configure_link(self.name, mtu=mtu, address=address, bridge=bridge, mac=mac)
            self.mac = link_mac(self.name)
        except (NetlinkError, OSError) as exc:
            self.close()
            raise TapError(str(exc)) from exc
        self.mtu = mtu
        self.write_errors = 0

    def read_batch(self, batch: FrameBatch) -> int:
        """Read frames into ``batch`` (from slot ``batch.count``) until EAGAIN or full.

        Returns the number read. Raises TapGone if the device went away.
        """
        got = 0
        readv = os.readv
        fd = self.fd
        vnet = self.vnet
        mv = memoryview(batch.buf)
        while batch.count < batch.capacity:
            i = batch.count
            off = batch.frame_offset(i) - vnet
            try:
                n = readv(fd, [mv[off : off + vnet + batch.max_frame]])
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _GONE:
                    raise self.gone(exc.errno) from exc
                raise
            if n <= vnet:
                break
            if vnet:
                flags, gso_type, _h, gso_size, _cs, _co = VNET_HDR.unpack_from(batch.buf, off)
                batch.vnet_flags[i] = flags
                batch.gso_type[i] = gso_type
                batch.gso_size[i] = gso_size
            batch.frame_len[i] = n - vnet
            batch.count += 1
            got += 1
        return got

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
        written, refused = fastio.tap_write(self.fd, batch, slots, self.vnet, self.mtu)
        self.write_errors += refused
        if written < 0:
            raise self.gone(-written)
        return written

    def gone(self, err: int | None) -> TapGone:
        """The error for an I/O call on the device that failed with ``err`` (one of _GONE)."""
        return TapGone(f"TAP {self.name} is gone ({os.strerror(err or errno.EIO)})")

    def close(self) -> None:
        """Close the fd; a non-persistent TAP disappears with it."""
        if not self.closed:
            self.closed = True
            try:
                self._dev.close()
            except Exception:
                pass
