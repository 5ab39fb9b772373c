"""A hostile VTEP, run inside a namespace by the reliability tests: VXLAN datagrams whose inner
frames each carry a new source MAC (a MAC flood), paced to a rate, bounded in count and time.

flood.py DEST_IP PORT VNI COUNT PPS [MAC_BASE] -> prints {"sent": N, "seconds": S}
"""

from __future__ import annotations

import json
import socket
import sys
import time

BATCH = 64


def main() -> None:
    dest, port, vni, count, pps = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        *map(int, sys.argv[4:6]),
    )
    base = int(sys.argv[6], 16) if len(sys.argv) > 6 else 0x0A0000000000
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    header = b"\x08\x00\x00\x00" + vni.to_bytes(3, "big") + b"\x00"
    dst = bytes.fromhex("02aabbccddee")  # nobody's: the receiving stack drops the frames
    body = b"\x08\x00" + bytes.fromhex("4500001c00004000401100000a0000010a000002") + bytes(8)
    start = time.monotonic()
    sent = 0
    deadline = start + count / pps + 30
    while sent < count and time.monotonic() < deadline:
        for _ in range(min(BATCH, count - sent)):
            src = (base + sent).to_bytes(6, "big")
            try:
                s.sendto(header + dst + src + body, (dest, port))
            except BlockingIOError:
                continue
            sent += 1
        ahead = sent / pps - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - start}))


if __name__ == "__main__":
    main()
