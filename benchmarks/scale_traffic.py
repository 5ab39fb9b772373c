"""Traffic for the scaling benchmark (benchmarks/scale.py): Ethernet frames written to devices
with an AF_PACKET socket, 64 per ``sendmmsg`` call, bounded in count and time.

``python -m benchmarks.scale_traffic --ifaces vx0,vx1 --dst sink --size 64 --seconds 3``
prints ``{"sent": N, "errors": N, "seconds": S, "cpu_s": S}`` on stdout. Frames are IPv4/UDP
(UDP payload ``--size`` bytes; ``--flows`` UDP source ports, so as many flows and outer source
ports at the VTEP), round-robin over ``--ifaces`` (frame j goes to interface j mod n). Their
destination MAC (``--dst``):

- ``sink``: interface k's sink MAC, which the VTEP under test has a static FDB entry for; the
  peer's vxlan device counts the frames (rx_packets) and drops them (not its MAC);
- ``fdb:F``: one of the F FDB entries of scale_vtep.py, spread over the table;
- ``bcast``: broadcast (flooded to every remote);
- ``unknown``: unicast MACs nobody has (unknown unicast: flooded after an L2 miss).

The MAC schemes live here so that the VTEP runner, the harness and the sender agree.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import resource
import socket
import struct
import sys
import time

BATCH = 64  # frames per sendmmsg call
MAX_FRAME = 9000  # bytes of the largest frame
PRIME = 1_000_003  # strides the FDB entries the ring's frames go to
ETH_P_IP = 0x0800
SOL_PACKET, PACKET_QDISC_BYPASS = 263, 20
BROADCAST = b"\xff" * 6
SADDR = bytes([198, 19, 0, 1])


def _mac(prefix: int, n: int) -> bytes:
    return bytes([0x02, prefix]) + n.to_bytes(4, "big")


def tap_mac(k: int) -> bytes:
    """The MAC of the VTEP's k-th TAP."""
    return _mac(0xAA, k)


def peer_mac(k: int) -> bytes:
    """The MAC of the peer's k-th vxlan device."""
    return _mac(0xBB, k)


def sink_mac(k: int) -> bytes:
    """Segment k's sink: a static FDB entry towards the peer, no device has it."""
    return _mac(0x5C, k)


def fdb_mac(i: int) -> bytes:
    """The i-th bulk FDB entry."""
    return _mac(0xF0, i)


def unknown_mac(i: int) -> bytes:
    """A unicast MAC no table knows."""
    return _mac(0xEE, i)


def fmt(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def _csum(header: bytes) -> int:
    s: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def frame(dst: bytes, src: bytes, flow: int, size: int) -> bytes:
    """An IPv4/UDP frame 198.19.0.1:(1024 + flow) -> 198.19.0.3:9 (broadcast: 255.255.255.255)
    with ``size`` bytes of UDP payload. The same on every interface: the flow, so the outer
    source port, depends on ``flow`` only."""
    daddr = b"\xff\xff\xff\xff" if dst == BROADCAST else bytes([198, 19, 0, 3])
    total = 20 + 8 + size
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 17, 0, SADDR, daddr)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    udp = struct.pack("!HHHH", 1024 + flow, 9, 8 + size, 0)
    return dst + src + struct.pack("!H", ETH_P_IP) + ip + udp + bytes(size)


def destination(mode: str, j: int, k: int) -> bytes:
    """The destination MAC of ring frame ``j`` sent to interface ``k``."""
    if mode == "sink":
        return sink_mac(k)
    if mode == "bcast":
        return BROADCAST
    if mode == "unknown":
        return unknown_mac(j % 256)
    if mode.startswith("fdb:"):
        return fdb_mac(j * PRIME % int(mode[4:]))
    raise ValueError(f"unknown --dst {mode!r}")


def _cpu_s() -> float:
    """This process's user + system time: with a kernel VTEP, its whole transmit path and most
    of the peer's receive run in the sender's system calls."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_Iovec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


class _SockaddrLl(ctypes.Structure):
    _fields_ = [
        ("family", ctypes.c_ushort),
        ("protocol", ctypes.c_ushort),
        ("ifindex", ctypes.c_int),
        ("hatype", ctypes.c_ushort),
        ("pkttype", ctypes.c_ubyte),
        ("halen", ctypes.c_ubyte),
        ("addr", ctypes.c_ubyte * 8),
    ]


class Sender:
    """A ring of ``ring`` prebuilt frames (a multiple of BATCH) and their message headers."""

    def __init__(self, ifaces: list[str], mode: str, size: int, ring: int, flows: int) -> None:
        ring = max(BATCH, ring // BATCH * BATCH)
        if not 0 <= size <= MAX_FRAME - 42:
            raise ValueError(f"--size {size}: frames of 42..{MAX_FRAME} bytes")
        slot = (size + 42 + 63) // 64 * 64
        self.ring = ring
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        except OSError:
            pass  # through the qdisc, then
        self.addrs = (_SockaddrLl * len(ifaces))()
        for k, name in enumerate(ifaces):
            a = self.addrs[k]
            a.family, a.protocol = socket.AF_PACKET, socket.htons(ETH_P_IP)
            a.ifindex, a.halen = socket.if_nametoindex(name), 6
        self.buf = ctypes.create_string_buffer(slot * ring)
        self.iov = (_Iovec * ring)()
        self.msgs = (_Mmsghdr * ring)()
        base = ctypes.addressof(self.buf)
        for j in range(ring):
            k = j % len(ifaces)
            f = frame(destination(mode, j, k), tap_mac(k), j // len(ifaces) % flows, size)
            ctypes.memmove(base + j * slot, f, len(f))
            self.iov[j].base, self.iov[j].len = base + j * slot, len(f)
            h = self.msgs[j].hdr
            h.name = ctypes.addressof(self.addrs[k])
            h.namelen = ctypes.sizeof(_SockaddrLl)
            h.iov = ctypes.pointer(self.iov[j])
            h.iovlen = 1
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._sendmmsg = libc.sendmmsg
        self._sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        self._sendmmsg.restype = ctypes.c_int

    def run(self, seconds: float, count: int) -> dict[str, float]:
        """Send until ``count`` frames went or ``seconds`` passed."""
        fd, base, step = self.sock.fileno(), ctypes.addressof(self.msgs), ctypes.sizeof(_Mmsghdr)
        batches = self.ring // BATCH
        sent = errors = calls = 0
        cpu0 = _cpu_s()
        start = time.monotonic()
        deadline = start + seconds
        while sent < count:
            if calls % 16 == 0 and time.monotonic() >= deadline:
                break
            n = self._sendmmsg(fd, base + (calls % batches) * BATCH * step, BATCH, 0)
            calls += 1
            if n < 0:
                errors += 1
                if ctypes.get_errno() not in (11, 105):  # EAGAIN, ENOBUFS: retry
                    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
                continue
            sent += n
        secs = time.monotonic() - start
        return {"sent": sent, "errors": errors, "seconds": secs, "cpu_s": _cpu_s() - cpu0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale_traffic")
    ap.add_argument("--ifaces", required=True, help="comma-separated devices")
    ap.add_argument("--dst", default="sink", help="sink, fdb:F, bcast or unknown")
    ap.add_argument("--size", type=int, default=64, help="UDP payload bytes")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--count", type=int, default=100_000_000, help="frames at most")
    ap.add_argument("--ring", type=int, default=4096, help="distinct prebuilt frames")
    ap.add_argument("--flows", type=int, default=1, help="UDP source ports per interface")
    a = ap.parse_args(argv)
    sender = Sender([i for i in a.ifaces.split(",") if i], a.dst, a.size, a.ring, max(1, a.flows))
    print(json.dumps(sender.run(min(a.seconds, 600.0), a.count)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
