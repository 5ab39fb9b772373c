"""A TAP device (python-pytun, IFF_TAP | IFF_NO_PI) read and written in batches."""

from __future__ import annotations

import errno
import ipaddress
import os

import pytun

from ..batch import FrameBatch
from .netlink import NetlinkError, configure_link, link_exists, link_mac

__all__ = ["Tap", "TapError", "TapGone"]

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
    ) -> None:
        if not name or len(name) > 15 or "/" in name or " " in name:
            raise TapError(f"invalid interface name {name!r} (1-15 characters, no '/' or space)")
        if link_exists(name):
            raise TapError(f"interface {name} exists already")
        try:
            self._dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TAP | pytun.IFF_NO_PI)
        except pytun.Error as exc:
            raise TapError(f"cannot create TAP {name}: {exc}") from exc
        self.name = str(self._dev.name)
        self.fd = int(self._dev.fileno())
        self.closed = False
        try:
            os.set_blocking(self.fd, False)
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
        while batch.count < batch.capacity:
            i = batch.count
            try:
                n = readv(fd, [batch.frame_buffer(i)])
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _GONE:
                    raise TapGone(f"TAP {self.name} is gone ({exc.strerror})") from exc
                raise
            if n <= 0:
                break
            batch.frame_len[i] = n
            batch.count += 1
            got += 1
        return got

    def write(self, frame: bytes | memoryview) -> bool:
        """Write one frame; False (and counted) if the device refused it."""
        try:
            os.write(self.fd, frame)
            return True
        except BlockingIOError:
            self.write_errors += 1
            return False
        except OSError as exc:
            if exc.errno in _GONE:
                raise TapGone(f"TAP {self.name} is gone ({exc.strerror})") from exc
            self.write_errors += 1
            return False

    def close(self) -> None:
        """Close the fd; a non-persistent TAP disappears with it."""
        if not self.closed:
            self.closed = True
            try:
                self._dev.close()
            except Exception:
                pass
