"""In-memory doubles of a VTEP's devices, for tests without root (as wireguard-go's tuntest).

A :class:`MemoryTap` is one end of a ``SOCK_SEQPACKET`` socket pair: like a TAP's fd, each read
gives one frame, each write takes one, and it never blocks; the C pumps and the Python driver use
it exactly as a TAP. The test holds the other end (``peer``) and plays the kernel: ``inject``
writes a frame (with a virtio-net header when offloads are on, e.g. a TCP super-frame with its
GSO type and size), ``received`` reads what the VTEP wrote. :class:`MemoryTaps` hands them to a
``Vtep`` (``Vtep(cfg, devices=MemoryTaps())``); the underlay is then UDP on loopback addresses
(``local = "127.0.0.1"``, remotes ``127.0.0.2`` ...), which needs no privilege either.
"""

from __future__ import annotations

import os
import select
import socket
import struct

from ..abi import VNET_HLEN
from .tap import DeviceSpec, FdDevice, TapError

__all__ = ["MemoryTap", "MemoryTaps", "vnet_header"]

_VNET = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
_BUF = 1 << 22


def vnet_header(
    flags: int = 0,
    gso_type: int = 0,
    hdr_len: int = 0,
    gso_size: int = 0,
    start: int = 0,
    offset: int = 0,
) -> bytes:
    """A virtio-net header as a TAP with IFF_VNET_HDR puts in front of a frame."""
    return _VNET.pack(flags, gso_type, hdr_len, gso_size, start, offset)


class MemoryTap(FdDevice):
    """A device double (see the module docstring)."""

    def __init__(self, spec: DeviceSpec) -> None:
        if spec.bridge is not None:
            raise TapError(f"{spec.name}: a memory device cannot join bridge {spec.bridge}")
        ours, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (ours, self.peer):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUF)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUF)
        ours.setblocking(False)
        self._ours = ours
        self.name = spec.name
        self.fd = ours.fileno()
        self.vnet = VNET_HLEN if spec.offload else 0
        self.mtu = spec.mtu
        self.mac = spec.mac or bytes([2]) + os.urandom(5)
        self.address = spec.address
        self.spec = spec  # as the VTEP asked for it (tests read e.g. its queue length)
        self.closed = False

    def inject(self, frame: bytes, header: bytes | None = None) -> None:
        """The "kernel" sends ``frame`` out of the device (``header``: its virtio-net header,
        zeros by default when offloads are on)."""
        if self.vnet:
            frame = (header if header is not None else bytes(self.vnet)) + frame
        self.peer.send(frame)

    def received(self, timeout: float = 1.0, limit: int = 10000) -> list[tuple[bytes, bytes]]:
        """(virtio-net header, frame) of each frame the VTEP wrote, until none comes for
        ``timeout`` seconds (the header is b"" without offloads)."""
        out: list[tuple[bytes, bytes]] = []
        while len(out) < limit and select.select([self.peer], [], [], timeout)[0]:
            data = self.peer.recv(1 << 17)
            if not data:
                break
            out.append((data[: self.vnet], data[self.vnet :]))
        return out

    def close(self) -> None:
        """Close both ends: the "device" is gone."""
        if not self.closed:
            self.closed = True
            self._ours.close()
            self.peer.close()


class MemoryTaps:
    """Devices for a Vtep that come from memory (``devices`` of ``Vtep``): ``taps`` by name."""

    def __init__(self, underlay_mtu: int = 1500) -> None:
        self.taps: dict[str, MemoryTap] = {}
        self._mtu = underlay_mtu

    def privileged(self) -> bool:
        return True  # nothing here needs a privilege

    def underlay_mtu(self, local: str | None, remote: str | None, dev: str | None) -> int | None:
        return self._mtu

    def open(self, spec: DeviceSpec) -> MemoryTap:
        if spec.name in self.taps and not self.taps[spec.name].closed:
            raise TapError(f"interface {spec.name} exists already")
        tap = MemoryTap(spec)
        self.taps[spec.name] = tap
        return tap
