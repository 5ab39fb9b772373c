"""ICMP errors about sent datagrams, on loopback (no root): a datagram to a closed port brings
back an ICMP port unreachable, which the send socket (IP_RECVERR) queues. It is read from the
error queue and counted per remote; the send that meets the pending error is tried again (both
backends), so the datagram is not lost and the report is counted once."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time

import pytest
import uvloop

from vxlanpy.batch import FrameBatch
from vxlanpy.engine import Datagram
from vxlanpy.events import IcmpError
from vxlanpy.io import batchio
from vxlanpy.io.errqueue import (
    IP_RECVERR,
    IPV6_RECVERR,
    MAX_REMOTES,
    MSG_ERRQUEUE,
    OTHER_REMOTES,
    IcmpCounters,
    IcmpReport,
    parse_report,
)
from vxlanpy.io.udp import UdpTransport

# a loopback address of this process's own: the fixed source ports below must not collide with
# a test running side by side in another process (pytest-xdist)
LO = f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}.1"


def _closed_port() -> int:
    """A UDP port on loopback that nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LO, 0))
        return int(s.getsockname()[1])


def _ee(errno_: int, origin: int, typ: int, code: int, info: int, offender: bytes) -> bytes:
    return struct.pack("=IBBBBII", errno_, origin, typ, code, 0, info, 0) + offender


def _sin(ip: str) -> bytes:
    return struct.pack("=HH4s8x", socket.AF_INET, 0, socket.inet_aton(ip))


def _sin6(ip: str) -> bytes:
    return struct.pack("=HHI16sI", socket.AF_INET6, 0, 0, socket.inet_pton(socket.AF_INET6, ip), 0)


def test_parse_report() -> None:
    ip = socket.IPPROTO_IP
    port = parse_report([(ip, IP_RECVERR, _ee(111, 2, 3, 3, 0, _sin("198.18.0.2")))])
    assert port == IcmpReport(111, 3, 3, "unreachable", None, "198.18.0.2")
    frag = parse_report([(ip, IP_RECVERR, _ee(90, 2, 3, 4, 1400, _sin("198.18.0.254")))])
    assert frag is not None and (frag.kind, frag.mtu) == ("frag_needed", 1400)
    ttl = parse_report([(ip, IP_RECVERR, _ee(113, 2, 11, 0, 0, _sin("198.18.0.254")))])
    assert ttl is not None and ttl.kind == "ttl_exceeded"
    v6 = parse_report(
        [(socket.IPPROTO_IPV6, IPV6_RECVERR, _ee(90, 3, 2, 0, 1280, _sin6("2001:db8::1")))]
    )
    assert v6 == IcmpReport(90, 2, 0, "frag_needed", 1280, "2001:db8::1")
    # local errors (origin 1), short or foreign control messages: not ICMP reports
    assert parse_report([(ip, IP_RECVERR, _ee(90, 1, 0, 0, 1500, b""))]) is None
    assert parse_report([(ip, IP_RECVERR, b"\x00" * 8)]) is None
    assert parse_report([(socket.SOL_SOCKET, 1, b"\x00" * 32)]) is None
    assert parse_report([]) is None
    # no offender address given (AF_UNSPEC)
    none = parse_report([(ip, IP_RECVERR, _ee(111, 2, 3, 3, 0, b"\x00" * 16))])
    assert none is not None and none.offender is None


def test_counters_rate_limit_and_bound() -> None:
    events: list[IcmpError] = []
    c = IcmpCounters(events.append)
    rep = IcmpReport(111, 3, 3, "unreachable", None, "198.18.0.2")
    for k in range(10):
        c.record("198.18.0.2", rep, 100.0 + k * 0.05)  # 10 reports in half a second
    assert [e.count for e in events] == [1]
    c.record("198.18.0.2", rep, 101.0)
    assert [e.count for e in events] == [1, 10]  # the 9 held back, and this one
    assert events[0] == IcmpError("198.18.0.2", "unreachable", 3, 3, None, "198.18.0.2", 1)
    c.record("198.18.0.3", IcmpReport(90, 3, 4, "frag_needed", 1400, "198.18.0.254"), 101.0)
    assert events[-1].remote == "198.18.0.3" and events[-1].mtu == 1400
    d = c.to_dict()
    assert d["198.18.0.2"]["unreachable"] == 11 and d["198.18.0.3"]["frag_needed"] == 1
    assert d["198.18.0.3"]["mtu"] == 1400
    assert d["198.18.0.3"]["last"] == {"type": 3, "code": 4, "from": "198.18.0.254"}
    # forged reports about many remotes: the table stays bounded
    for k in range(3 * MAX_REMOTES):
        c.record(f"198.19.{k >> 8}.{k & 255}", rep, 200.0)
    assert len(c.to_dict()) == MAX_REMOTES + 1
    assert c.to_dict()[OTHER_REMOTES]["unreachable"] >= 2 * MAX_REMOTES
    assert c.total() == 12 + 3 * MAX_REMOTES


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_transport_counts_port_unreachable_per_remote(loop: str) -> None:
    """On both loops: libuv stops watching a socket that reports EPOLLERR, so the transport
    watches its send sockets through an epoll set of its own."""

    async def main() -> None:
        t = UdpTransport(port=_closed_port(), local=LO)
        events: list[IcmpError] = []
        try:
            t.watch_errors(asyncio.get_running_loop(), events.append)
            dead = _closed_port()
            for k in range(5):
                assert t.send(Datagram(b"\x08" + bytes(15), LO, dead, 40000 + k % 2, 42, -1))
                await asyncio.sleep(0.02)
            for _ in range(100):
                if t.icmp.total() >= 5:
                    break
                await asyncio.sleep(0.01)
            d = t.icmp.to_dict()
            assert d[LO]["unreachable"] == 5, d
            assert d[LO]["last"] == {"type": 3, "code": 3, "from": LO}
            assert [e.count for e in events] == [1]  # one event per remote per second
            assert t.tx_packets == 5 and not t.errors, t.errors  # nothing refused or lost
        finally:
            t.close()

    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


@pytest.mark.parametrize("name", ["cffi", "python"])
@pytest.mark.parametrize("gso", [False, True])
def test_send_after_a_pending_icmp_error_is_not_lost(name: str, gso: bool) -> None:
    io = batchio.load(name)
    dead = _closed_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LO, 0))
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        s.sendto(b"x" * 16, (LO, dead))
        time.sleep(0.05)  # the port unreachable comes back over loopback
        # the error is pending: without the retry, the first send would fail ECONNREFUSED
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((LO, 0))
            port = probe.getsockname()[1]
            probe.settimeout(2)
            batch = FrameBatch(4, 64)
            for k in range(3):  # equal sizes: one UDP GSO send (C); else sendmmsg
                batch.append_frame(b"\x02" + bytes(13) + b"payload!" + (b"" if gso else bytes(k)))
            for i in range(3):
                batch.payload_len[i] = batch.frame_len[i] + 8
            assert io.udp_send(s, batch, 0, 3, LO, port) == 3
            got = [probe.recv(100) for _ in range(3)]
            assert len(got) == 3
        # the report itself is still in the queue, to be counted once
        _d, anc, _f, addr = s.recvmsg(64, 512, MSG_ERRQUEUE)
        rep = parse_report(anc)
        assert rep is not None and rep.kind == "unreachable" and addr[1] == dead
