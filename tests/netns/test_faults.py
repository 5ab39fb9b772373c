"""Faults, black box through the CLI: vxlanpy on ``a`` against the kernel's vxlan on ``b``.

TAP deleted under load (exit 1 at once, cleanly), the peer restarted, the underlay link down
and up, the receive buffer overrun (counted drops, no crash), the send buffer full (what the kernel
took counted as sent, the rest as EAGAIN), SIGTERM under TCP load (exit 0 at once, TAP and socket
removed). A peer that is unreachable is in test_icmp.py. Every load here
is bounded in count and time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Vxlanpy, ping
from test_control import OB, UA, UB, VNI, _ok, _pair, _vtep_args

from vxlanpy.config import TAP_QUEUE
from vxlanpy.control import request
from vxlanpy.netns import Host, Topology, wait_for

FLOOD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + float(sys.argv[3])
n = 0
while time.monotonic() < end and n < int(sys.argv[2]):
    try:
        s.sendto(b"x" * int(sys.argv[5]), (sys.argv[1], 9000 + n % int(sys.argv[4])))
    except OSError:
        time.sleep(0.001)
    n += 1
print(n)
"""


def _flood(
    h: Host, dest: str, count: int, seconds: float, ports: int = 64, size: int = 200
) -> subprocess.Popen[bytes]:
    """A bounded UDP flood (``count`` datagrams or ``seconds``) to ``dest`` on the overlay, to
    ``ports`` destination ports (so as many flows), ``size`` bytes of payload each."""
    argv = [sys.executable, "-c", FLOOD, dest, str(count), str(seconds), str(ports), str(size)]
    return h.popen(argv, stdout=subprocess.PIPE)


def _dev(h: Host, dev: str) -> list[int]:
    """``dev``'s counters in ``h`` as /proc/net/dev lists them (1: rx_packets, 9: tx_packets,
    11: tx_dropped)."""
    lines = h.sh("cat", "/proc/net/dev").splitlines()
    return [int(x) for x in next(ln for ln in lines if f"{dev}:" in ln).split(":")[1].split()]


def _up(topo: Topology, tmp_path: Path, *extra: str) -> tuple[Host, Host, Vxlanpy, str]:
    a, b = _pair(topo)
    sock = str(tmp_path / "a.sock")
    v = Vxlanpy(topo, a, _vtep_args(sock, "--remote", UB, *extra))
    ping(a, OB, count=2)
    return a, b, v, sock


def _reaches(h: Host, ip: str, seconds: float = 10) -> bool:
    return wait_for(
        lambda: " 0% packet loss" in h.sh("ping", "-c", "1", "-W", "1", ip, check=False),
        seconds,
        0.2,
    )


@pytest.mark.alone  # a flood: its load would bend the timing of tests beside it
def test_tap_deleted_under_load(topo: Topology, tmp_path: Path) -> None:
    a, b, v, sock = _up(topo, tmp_path)
    flood = _flood(a, OB, 2_000_000, 5)
    time.sleep(1.0)
    t0 = time.monotonic()
    a.ip("link", "del", "vx0")
    code = v.proc.wait(5)
    took = time.monotonic() - t0
    topo.stop(flood)
    v.stop()
    print(f"TAP deleted under load: exit {code} after {took:.3f} s")
    assert code == 1 and took < 1.0, v.lines
    errors = [line for line in v.lines if ": error: " in line]
    assert len(errors) == 1 and "TAP vx0 is gone" in errors[0], v.lines
    assert not any("Traceback" in line for line in v.lines), v.lines
    assert v.stats()["segments"][str(VNI)]["tx_packets"] > 0  # the final stats line
    assert not os.path.exists(sock)


def test_peer_restart(topo: Topology, tmp_path: Path) -> None:
    a, b, v, sock = _up(topo, tmp_path)
    for _ in range(2):
        b.ip("link", "del", "vx0")  # the peer goes away: nothing answers
        out = a.sh("ping", "-c", "2", "-i", "0.2", "-W", "1", OB, check=False)
        assert " 100% packet loss" in out, out
        topo.kernel_vxlan(b, vni=VNI, dev="u0", remote=UA, local=UB, address=f"{OB}/24")
        a.sh("ip", "neigh", "flush", "dev", "vx0")  # the restarted peer has a new MAC
        t0 = time.monotonic()
        assert _reaches(a, OB), "no traffic after the peer restarted"
        print(f"peer restart: traffic back after {time.monotonic() - t0:.3f} s")
    st = request(sock, {"cmd": "stats"})["segments"][str(VNI)]
    assert st["moved"] >= 1 or st["learned"] >= 2  # the new MACs were learned
    assert v.stop() == 0, v.lines


def test_underlay_link_down_and_up(topo: Topology, tmp_path: Path) -> None:
    a, b, v, sock = _up(topo, tmp_path)
    a.ip("link", "set", "u0", "down")
    out = a.sh("ping", "-c", "3", "-i", "0.2", "-W", "1", OB, check=False)
    assert " 100% packet loss" in out, out
    errors = request(sock, {"cmd": "stats"})["socket_errors"]
    print(f"link down: socket errors {errors}")
    assert sum(errors.values()) > 0  # the refused sends were counted (ENETUNREACH, ...)
    a.ip("link", "set", "u0", "up")
    t0 = time.monotonic()
    assert _reaches(a, OB), "no traffic after the link came back"
    print(f"link up: traffic back after {time.monotonic() - t0:.3f} s")
    assert v.proc.poll() is None
    assert v.stop() == 0, v.lines


def test_receive_buffer_overrun(topo: Topology, tmp_path: Path) -> None:
    """vxlanpy stopped (SIGSTOP, as a long stall would) while the peer floods it: its 8 MiB
    receive buffer overflows; the kernel's drops are reported in stats, and it goes on."""
    a, b, v, sock = _up(topo, tmp_path)
    os.kill(v.proc.pid, signal.SIGSTOP)
    try:
        flood = _flood(b, "198.19.0.1", 60_000, 10)
        sent = int(flood.communicate(timeout=30)[0])
    finally:
        os.kill(v.proc.pid, signal.SIGCONT)
    assert wait_for(lambda: request(sock, {"cmd": "stats"})["rx_socket_dropped"] > 0, 5)

    def accounted() -> int:  # the datapath thread may still be delivering what was queued
        st = request(sock, {"cmd": "stats"})
        return int(st["rx_socket_dropped"] + st["segments"][str(VNI)]["rx_packets"])

    wait_for(lambda: accounted() >= sent, 5)
    st = request(sock, {"cmd": "stats"})
    seg = st["segments"][str(VNI)]
    print(
        f"overrun: {sent} sent while stopped, {seg['rx_packets']} delivered, "
        f"{st['rx_socket_dropped']} dropped by the kernel (receive buffer full)"
    )
    assert st["rx_socket_dropped"] + seg["rx_packets"] >= sent
    text = _ok(a, "stats", "--control", sock)
    assert f"receive buffer full: {st['rx_socket_dropped']}" in text
    ping(a, OB, count=2)
    assert v.stop() == 0, v.lines
    assert v.stats()["rx_socket_dropped"] >= st["rx_socket_dropped"]  # in the final line too
    assert not any("Traceback" in line for line in v.lines), v.lines


@pytest.mark.parametrize("queue", [None, 64], ids=["default-queue", "tap-queue-64"])
def test_tap_queue_overrun_is_a_counted_loss(
    topo: Topology, tmp_path: Path, queue: int | None
) -> None:
    """vxlanpy stopped while its own host floods the overlay: the kernel's queue of the TAP
    towards vxlanpy (``--tap-queue``, default TAP_QUEUE frames) overflows (the TAP's
    tx_dropped); stats says so under ``losses``."""
    qlen = queue or TAP_QUEUE
    a, b, v, sock = _up(topo, tmp_path, *(["--tap-queue", str(queue)] if queue else []))
    os.kill(v.proc.pid, signal.SIGSTOP)
    try:
        flood = _flood(a, OB, 20_000, 10)
        sent = int(flood.communicate(timeout=30)[0])
    finally:
        os.kill(v.proc.pid, signal.SIGCONT)
    dev = a.sh("cat", "/proc/net/dev")
    tx_dropped = next(int(ln.split(":")[1].split()[11]) for ln in dev.splitlines() if "vx0:" in ln)
    st = request(sock, {"cmd": "stats"})
    lost = st["losses"]
    print(f"TAP queue: {sent} sent while stopped, {tx_dropped} dropped, losses {lost}")
    assert tx_dropped > 0 and lost["tap_queue"] == tx_dropped == st["tap_queue_dropped"]["vx0"]
    # the queue is the configured one: no more than its length waited for vxlanpy
    assert int(a.sh("cat", "/sys/class/net/vx0/tx_queue_len")) == qlen
    assert sent - tx_dropped <= qlen < sent
    assert lost["total"] >= lost["tap_queue"]
    assert f"tap queue {tx_dropped}" in _ok(a, "stats", "--control", sock)
    ping(a, OB, count=2)
    assert v.stop() == 0, v.lines


def _send_counts(sock: str) -> tuple[int, int, int, int]:
    """(tx_packets, dropped, EAGAIN, losses' send) of the VTEP behind ``sock``."""
    st = request(sock, {"cmd": "stats"})
    seg = st["segments"][str(VNI)]
    eagain = st["socket_errors"].get("EAGAIN", 0)
    return seg["tx_packets"], seg["dropped"], eagain, st["losses"]["send"]


@pytest.mark.parametrize("path", ["fast", "slow", "python"])
def test_send_buffer_full(topo: Topology, tmp_path: Path, path: str) -> None:
    """The underlay's queue held (tbf at 1 Mbit/s, 64 MB of queue): the skbs stay charged to
    vxlanpy's send socket, whose 8 MiB buffer fills; sendmmsg then takes a part of a batch or
    none. What the kernel took is counted as tx_packets (the peer receives exactly that many
    once the queue is released), the rest as EAGAIN (a loss under ``send``): together every
    frame vxlanpy read from the TAP. ``fast``: the C datapath (vx_count_send); ``slow``
    (``--no-fast-path``) and ``python`` (the pure-Python backend): the engine's count, less what
    the transport says the kernel refused (``UdpTransport.send_datagrams``, ``Engine.not_sent``)."""
    a, b = _pair(topo)
    sock = str(tmp_path / "a.sock")
    backend = "python" if path == "python" else "cffi"
    extra = ["--no-fast-path"] if path == "slow" else []
    v = Vxlanpy(topo, a, _vtep_args(sock, "--remote", UB, *extra), backend=backend)
    ping(a, OB, count=2)
    for ip, dev in ((UB, "u0"), (OB, "vx0")):  # no ARP probes under the flood
        mac = b.sh("cat", f"/sys/class/net/{dev}/address").strip()
        a.ip("neigh", "replace", ip, "lladdr", mac, "dev", dev, "nud", "permanent")
    tbf = ["root", "tbf", "burst", "16kb", "limit", "64mb"]
    a.sh("tc", "qdisc", "add", "dev", "u0", *tbf, "rate", "1mbit")
    base = (*_send_counts(sock), *_dev(a, "vx0")[9:12:2], _dev(b, "vx0")[1])

    def counts() -> list[int]:
        """Since the start: tx, dropped, EAGAIN, losses' send; the TAP's frames read by
        vxlanpy and refused by the kernel (queue full); the peer's rx_packets."""
        now = (*_send_counts(sock), *_dev(a, "vx0")[9:12:2], _dev(b, "vx0")[1])
        return [x - y for x, y in zip(now, base, strict=True)]

    def settled() -> bool:  # every frame the TAP took was read, every frame read is counted
        tx, drop, again, _, read, refused, _ = counts()
        return read + refused >= sent and tx + drop + again == read

    a.ip("link", "set", "vx0", "txqueuelen", "20000")  # the TAP holds all, for the slow path
    flood = _flood(a, OB, 20_000, 10, ports=1, size=1000)  # one flow: one send socket
    sent = int(flood.communicate(timeout=30)[0])
    assert wait_for(settled, 30, 0.2), counts()
    held = counts()
    a.sh("tc", "qdisc", "change", "dev", "u0", *tbf, "rate", "100mbit")  # release the queue
    delivered = wait_for(lambda: (c := counts())[6] == c[0] and settled(), 20, 0.2)
    tx, drop, again, lost, read, refused, peer = counts()
    print(
        f"send buffer full ({path}): {sent} sent to the TAP, {read} read by vxlanpy, "
        f"{tx} sent (the peer received {peer}), {again} EAGAIN, {drop} dropped"
    )
    assert held[2] > 0 and held[0] > 0  # the buffer filled, and what it held went out
    assert delivered, (tx, peer)
    assert tx + again + drop == read and lost == again and peer == tx
    ping(a, OB, count=2)  # and it goes on
    assert v.stop() == 0, v.lines
    assert not any("Traceback" in line for line in v.lines), v.lines


def test_sigterm_under_tcp_load(topo: Topology, tmp_path: Path) -> None:
    a, b, v, sock = _up(topo, tmp_path)
    srv = b.popen(["iperf3", "-s", "-1", "-B", OB], stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    client = a.popen(["iperf3", "-c", OB, "-t", "10", "-J"], stdout=subprocess.PIPE)
    assert wait_for(
        lambda: request(sock, {"cmd": "stats"})["segments"][str(VNI)]["tx_bytes"] > 50_000_000,
        8,
    ), "no TCP load"
    t0 = time.monotonic()
    v.proc.send_signal(signal.SIGTERM)
    code = v.proc.wait(5)
    took = time.monotonic() - t0
    print(f"SIGTERM under TCP load: exit {code} after {took:.3f} s")
    topo.stop(client)
    topo.stop(srv)
    v.stop()
    assert code == 0 and took < 1.0, v.lines
    assert not os.path.exists(sock)
    assert "vx0" not in a.ip("-br", "link", "show")
    assert not any("Traceback" in line or ": error: " in line for line in v.lines), v.lines
    assert json.dumps(v.stats())
