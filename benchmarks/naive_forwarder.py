"""A deliberately naive VXLAN forwarder: the baseline a user would write in an afternoon.

One TAP, one peer, per packet: read a frame, ``struct.pack`` a header, ``sendto``; receive a
datagram, check the I flag and VNI, write the frame. uvloop readers, no batching, no FDB, no
checksum fix-ups, one fixed source port. It exists only so that the benchmark can show what the
real dataplane buys over it, in the same run.

    python naive_forwarder.py --vni 120 --local 198.18.0.1 --remote 198.18.0.2 \\
        --tap vx0 --address 198.19.0.1/24 [--dstport 4789] [--mtu 1450]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys

import pytun


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--vni", type=int, required=True)
    p.add_argument("--local", required=True)
    p.add_argument("--remote", required=True)
    p.add_argument("--tap", default="vx0")
    p.add_argument("--address", required=True)
    p.add_argument("--dstport", type=int, default=4789)
    p.add_argument("--mtu", type=int, default=1450)
    a = p.parse_args()

    tap = pytun.TunTapDevice(name=a.tap, flags=pytun.IFF_TAP | pytun.IFF_NO_PI)
    tap.mtu = a.mtu
    subprocess.run(["ip", "addr", "add", a.address, "dev", a.tap], check=True)
    subprocess.run(["ip", "link", "set", a.tap, "up"], check=True)
    fd = tap.fileno()
    os.set_blocking(fd, False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((a.local, a.dstport))
    sock.setblocking(False)
    header = struct.pack("!II", 0x08 << 24, a.vni << 8)
    peer = (a.remote, a.dstport)

    def from_tap() -> None:
        while True:
            try:
                frame = os.read(fd, 65536)
            except BlockingIOError:
                return
            try:
                sock.sendto(header + frame, peer)
            except OSError:
                pass

    def from_udp() -> None:
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            if len(data) < 22:
                continue
            flags, vni = struct.unpack_from("!II", data)
            if flags >> 24 & 0x08 and vni >> 8 == a.vni:
                try:
                    os.write(fd, data[8:])
                except OSError:
                    pass

    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    loop = asyncio.new_event_loop()
    loop.add_reader(fd, from_tap)
    loop.add_reader(sock.fileno(), from_udp)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, loop.stop)
    print(
        f"naive forwarder: {a.tap} <-> {a.local}:{a.dstport} -> {a.remote}",
        file=sys.stderr,
        flush=True,
    )
    loop.run_forever()
    tap.close()
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
