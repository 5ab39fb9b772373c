"""TCP transfer with a SHA-256 check, run inside namespaces by the interop tests.

xfer.py recv BIND_IP PORT          -> prints {"bytes": N, "sha256": H} after EOF
xfer.py send HOST PORT NBYTES SEED -> prints {"bytes": N, "sha256": H, "seconds": S}
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import sys
import time


def recv(bind_ip: str, port: int) -> None:
    fam = socket.AF_INET6 if ":" in bind_ip else socket.AF_INET
    srv = socket.socket(fam, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((bind_ip, port))
    srv.listen(1)
    srv.settimeout(60)
    print("ready", flush=True)
    conn, _ = srv.accept()
    conn.settimeout(60)
    h = hashlib.sha256()
    n = 0
    while chunk := conn.recv(1 << 16):
        h.update(chunk)
        n += len(chunk)
    print(json.dumps({"bytes": n, "sha256": h.hexdigest()}), flush=True)


def send(host: str, port: int, nbytes: int, seed: int) -> None:
    rng = random.Random(seed)
    deadline = time.monotonic() + 10
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    conn.settimeout(60)
    h = hashlib.sha256()
    start = time.monotonic()
    left = nbytes
    while left:
        chunk = rng.randbytes(min(left, 1 << 16))
        conn.sendall(chunk)
        h.update(chunk)
        left -= len(chunk)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)
    secs = time.monotonic() - start
    print(json.dumps({"bytes": nbytes, "sha256": h.hexdigest(), "seconds": secs}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "recv":
        recv(sys.argv[2], int(sys.argv[3]))
    else:
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
