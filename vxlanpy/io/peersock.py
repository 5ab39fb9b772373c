"""The peer watch's socket: copies of the few underlay packets its BPF program keeps
(peerwatch.py), read on the event loop.

An AF_PACKET ``SOCK_DGRAM`` socket for IPv4 or IPv6 on every device of the namespace, with
``PACKET_IGNORE_OUTGOING`` (what this host sends is not copied) and a small receive buffer.
The kernel runs the BPF program on each received packet before copying anything, and keeps
only what differs from this VTEP's ways; once a peer was warned about, the program is
replaced by one that leaves that peer out. Opening it needs CAP_NET_RAW (it is opened before
a privilege drop); without it there is no watch, which is said once in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable, Iterable

from ..events import PeerMismatch
from ..peerwatch import FILTERED, SNAP, Insn, PeerWatch

__all__ = ["PeerSocket", "attach", "ifindexes", "open_watch"]

log = logging.getLogger("vxlanpy")

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
SO_ATTACH_FILTER = 26
SOL_PACKET, PACKET_IGNORE_OUTGOING = 263, 23  # linux/if_packet.h (Linux 4.20+)
_BUDGET = 32  # packets read per wake-up


def attach(sock: socket.socket, prog: list[Insn]) -> None:
    """Install (or replace) the classic BPF program ``prog`` on ``sock``."""
    import ctypes

    raw = b"".join(struct.pack("=HBBI", *insn) for insn in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class PeerSocket:
    """Feeds the packets ``watch``'s program keeps to it; ``emit`` gets its events."""

    def __init__(self, watch: PeerWatch, emit: Callable[[PeerMismatch], None]) -> None:
        self.watch = watch
        self.emit = emit
        proto = ETH_P_IPV6 if watch.v6 else ETH_P_IP
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(proto))
        try:
            attach(self.sock, watch.program())  # before anything else is queued
            with contextlib.suppress(OSError):  # older kernels copy outgoing packets: dropped
                self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        changed = False
        for _ in range(_BUDGET):
            try:
                data, addr = self.sock.recvfrom(SNAP)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            ev = self.watch.packet(data)
            if ev is not None:
                changed = True
                self.emit(ev)
        if changed and len(self.watch.warned) >= self.watch.max_peers:
            log.warning("peer watch: %d peers warned about, watching no more", self.watch.max_peers)
            self.close()
        elif changed and len(self.watch.warned) <= FILTERED:
            with contextlib.suppress(OSError):
                attach(self.sock, self.watch.program())

    def close(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()


def ifindexes(names: Iterable[str]) -> list[int]:
    """The interface indexes of the devices ``names`` that exist (in-memory doubles do not)."""
    out = []
    for name in names:
        with contextlib.suppress(OSError):
            out.append(socket.if_nametoindex(name))
    return out


def open_watch(watch: PeerWatch, emit: Callable[[PeerMismatch], None]) -> PeerSocket | None:
    """The watch's socket, or None (logged) if it cannot be opened."""
    try:
        return PeerSocket(watch, emit)
    except OSError as exc:
        log.info("no peer watch: %s", exc)
        return None
