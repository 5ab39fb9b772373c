"""Two whole VTEPs without root: in-memory devices (io/memory.py) and UDP on loopback.

The devices are the doubles of io/memory.py (a socket pair per TAP: the test is the kernel on
the other end), so the C pumps (reading and writing "TAP" fds, the sender thread, UDP GSO sends,
UDP GRO receives) and the Python path run as they do on a real host, and their results are
checked here with scapy: learning both ways, floods, unicast hits handled in C, and a TCP
super-frame cut into chunks on one side and merged back into one on the other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from vxlanpy import datapath
from vxlanpy.config import SegmentSpec, VtepConfig
from vxlanpy.events import PeerMismatch
from vxlanpy.io.memory import MemoryTap, MemoryTaps, vnet_header
from vxlanpy.tunnel import Vtep

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
# loopback addresses of this process's own (random) /24: test processes running side by side
# (pytest-xdist) send the same flows, hence from the same source ports, and must not collide
_NET = f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}"
A_IP, B_IP = f"{_NET}.1", f"{_NET}.2"
VNI = 42
FAST = [True, False] if datapath.available() else [False]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((A_IP, 0))
        return int(s.getsockname()[1])


def _cfg(local: str, remote: str, mac: str, port: int, fast: bool) -> VtepConfig:
    seg = SegmentSpec(vni=VNI, tap="vx0", mac=mac, remotes=[remote])
    return VtepConfig(segments=[seg], local=local, dstport=port, fast_path=fast)


@asynccontextmanager
async def pair(fast: bool) -> AsyncIterator[tuple[Vtep, MemoryTap, Vtep, MemoryTap]]:
    port = _free_port()
    da, db = MemoryTaps(), MemoryTaps()
    a = Vtep(_cfg(A_IP, B_IP, MAC_A, port, fast), devices=da)
    b = Vtep(_cfg(B_IP, A_IP, MAC_B, port, fast), devices=db)
    await a.start()
    try:
        await b.start()
        try:
            yield a, da.taps["vx0"], b, db.taps["vx0"]
        finally:
            await b.close()
    finally:
        await a.close()


def _udp(src: str, dst: str, n: int) -> bytes:
    """A frame of one UDP flow (one outer source port), told apart by its payload."""
    return bytes(
        Ether(src=src, dst=dst)
        / IP(src="192.0.2.1", dst="192.0.2.2")
        / UDP(sport=1000)
        / Raw(bytes([n]) * 40)
    )


async def _got(tap: MemoryTap, timeout: float = 0.5) -> list[tuple[bytes, bytes]]:
    return await asyncio.to_thread(tap.received, timeout)


@pytest.mark.parametrize("fast", FAST, ids=lambda f: "c-pumps" if f else "python")
def test_learning_floods_and_unicast(fast: bool) -> None:
    async def main() -> None:
        async with pair(fast) as (a, ta, b, tb):
            assert (a.pumps is not None) == fast
            bcast = _udp(MAC_A, "ff:ff:ff:ff:ff:ff", 0)
            ta.inject(bcast)
            assert [f for _h, f in await _got(tb)] == [bcast]  # flooded to B
            reply = _udp(MAC_B, MAC_A, 1)
            tb.inject(reply)
            assert [f for _h, f in await _got(ta)] == [reply]  # B learned A: unicast
            frames = [_udp(MAC_A, MAC_B, 2 + k) for k in range(50)]
            for f in frames:
                ta.inject(f)
            assert [f for _h, f in await _got(tb)] == frames  # all, in order
            sa, sb = a.stats(), b.stats()
            seg_a, seg_b = sa["segments"][VNI], sb["segments"][VNI]
            assert seg_a["learned"] == 1 and seg_b["learned"] == 1
            assert seg_a["tx_packets"] == 51 and seg_b["rx_packets"] == 51
            assert sa["fast_path"] == fast
            if fast:  # the unicast frames were hits (all but the flow's first, which opened
                # its source port's socket): forwarded by C, counted by C
                assert a.engine.datapath is not None and b.engine.datapath is not None
                assert a.engine.datapath.segment_counters(VNI)["tx_packets"] >= 49
                assert b.engine.datapath.segment_counters(VNI)["rx_packets"] >= 49

    asyncio.run(main())


def _super_frame(n: int, mss: int) -> tuple[bytes, bytes]:
    """A TCP super-frame of n * mss payload bytes as a TSO TAP hands it over: the checksum
    field holds the pseudo-header sum (NEEDS_CSUM), and its virtio-net header."""
    payload = bytes(range(256)) * (n * mss // 256 + 1)
    pkt = (
        Ether(src=MAC_A, dst=MAC_B)
        / IP(src="192.0.2.1", dst="192.0.2.2", id=7)
        / TCP(sport=40000, dport=5201, seq=1000, flags="A")
        / Raw(payload[: n * mss])
    )
    frame = bytearray(bytes(pkt))
    frame[14 + 20 + 16 : 14 + 20 + 18] = b"\x00\x00"  # not a valid checksum: the cut computes
    return bytes(frame), vnet_header(1, 1, 14 + 40, mss, 14 + 20, 16)


@pytest.mark.parametrize("fast", FAST, ids=lambda f: "c-pumps" if f else "python")
def test_super_frame_cut_and_merged(fast: bool) -> None:
    async def main() -> None:
        async with pair(fast) as (a, ta, b, tb):
            tb.inject(_udp(MAC_B, "ff:ff:ff:ff:ff:ff", 0))  # A learns B
            assert await _got(ta)
            frame, header = _super_frame(20, 1400)
            ta.inject(frame, header)
            got = await _got(tb)
            sent_payload = bytes(Ether(frame)[TCP].payload)
            if fast:  # B's UDP_GRO receive of A's GSO send, merged back into one super-frame
                ((hdr, merged),) = got
                assert hdr[0] == 1 and hdr[1] == 1 and int.from_bytes(hdr[4:6], "little") > 0
                p = Ether(merged)
                assert bytes(p[TCP].payload) == sent_payload and p[TCP].seq == 1000
                assert b.stats()["gro"]["coalesced"] == 1
            else:  # the Python path: one chunk per datagram, each with a valid checksum
                assert len(got) == 20
                chunks = [Ether(f) for _h, f in got]
                for k, c in enumerate(chunks):
                    assert c[TCP].seq == 1000 + 1400 * k
                    want = c[TCP].chksum
                    del c[TCP].chksum
                    assert Ether(bytes(c))[TCP].chksum == want
                assert b"".join(bytes(c[TCP].payload) for c in chunks) == sent_payload
            assert a.stats()["gso_frames"] == 1 and a.stats()["gso_errors"] == 0

    asyncio.run(main())


def test_the_pure_python_twin_too() -> None:
    """The Python-path tests above once more with the pure-Python twin of every C kernel and
    of the batched I/O (a process of its own: the backend is chosen at import)."""
    env = {**os.environ, "VXLANPY_PURE_PYTHON": "1"}
    env.pop("VXLANPY_REQUIRE_C", None)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "python and not twin",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "2 passed" in p.stdout, p.stdout[-500:]


@pytest.mark.skipif(not datapath.available(), reason="needs the C datapath (cffi backend)")
def test_datapath_thread_hands_over_to_tracing() -> None:
    """With the C datapath the pumps run on the datapath thread; a trace moves them to the
    event loop (every batch traced, hits included) and the thread comes back after it."""
    from vxlanpy import trace_live

    async def main() -> None:
        async with pair(True) as (a, ta, b, tb):
            assert a.datapath_thread and b.datapath_thread
            assert a.stats()["datapath_thread"] is True
            tb.inject(_udp(MAC_B, "ff:ff:ff:ff:ff:ff", 0))  # A learns B
            assert await _got(ta)
            records: list[object] = []
            token = trace_live.add_sink(a.engine, records.append)
            assert not a.datapath_thread  # the event loop pumps while something traces
            traced = [_udp(MAC_A, MAC_B, 10 + k) for k in range(5)]
            for f in traced:
                ta.inject(f)
            assert [f for _h, f in await _got(tb)] == traced
            assert len(records) >= len(traced)  # each frame's decision, C's hits among them
            trace_live.remove_sink(a.engine, token)
            assert a.datapath_thread and a.engine.tracer is None
            c_tx = a.engine.datapath.segment_counters(VNI)["tx_packets"]  # type: ignore[union-attr]
            after = [_udp(MAC_A, MAC_B, 20 + k) for k in range(5)]
            for f in after:
                ta.inject(f)
            assert [f for _h, f in await _got(tb)] == after
            assert a.engine.datapath.segment_counters(VNI)["tx_packets"] == c_tx + 5  # type: ignore[union-attr]
            assert len(records) < len(traced) + len(after)  # not traced any more

    asyncio.run(main())


@pytest.mark.skipif(not datapath.available(), reason="needs the C datapath (cffi backend)")
def test_datapath_thread_refreshes_what_it_delivers() -> None:
    """A frame the datapath thread delivers refreshes its source's learned entry with the time
    of that wake-up, not an earlier one; a burst injected after an idle spell (its first frame
    read alone, csrc/loop.c) arrives whole and in order."""

    async def main() -> None:
        async with pair(True) as (a, ta, b, tb):
            dp = a.engine.datapath
            assert dp is not None and a.datapath_thread
            mac_b = bytes.fromhex(MAC_B.replace(":", ""))
            tb.inject(_udp(MAC_B, "ff:ff:ff:ff:ff:ff", 0))  # A learns B (the engine)
            assert await _got(ta)
            learned = dp.seen_ms(VNI, mac_b)
            assert learned is not None
            await asyncio.sleep(0.3)  # idle: the thread sleeps
            rx0 = dp.segment_counters(VNI)["rx_packets"]
            before = time.monotonic() * 1000
            burst = [_udp(MAC_B, MAC_A, 1 + k) for k in range(20)]
            for f in burst:
                tb.inject(f)
            assert [f for _h, f in await _got(ta)] == burst
            after = time.monotonic() * 1000
            assert dp.segment_counters(VNI)["rx_packets"] == rx0 + 20  # delivered by C
            seen = dp.seen_ms(VNI, mac_b)
            assert seen is not None and before - 1 <= seen <= after + 1, (learned, seen)
            assert seen >= learned + 250
            out = [_udp(MAC_A, MAC_B, 30 + k) for k in range(20)]
            for f in out:  # the other way: B's frames in order after A's idle spell
                ta.inject(f)
            assert [f for _h, f in await _got(tb)] == out

    asyncio.run(main())


def test_tap_queue_reaches_the_device() -> None:
    """The VTEP asks its devices for the TAP queue of its config (``tap_queue``): the default
    TAP_QUEUE, or the configured length (what the kernel's TAP gets as its txqueuelen)."""
    from vxlanpy.config import TAP_QUEUE

    async def main() -> None:
        port = _free_port()
        for cfg, want in (
            (_cfg(A_IP, B_IP, MAC_A, port, False), TAP_QUEUE),
            (dataclasses.replace(_cfg(A_IP, B_IP, MAC_A, port, False), tap_queue=64), 64),
        ):
            v = Vtep(cfg, devices=(devs := MemoryTaps()))
            await v.start()
            try:
                assert devs.taps["vx0"].spec.queue == want
            finally:
                await v.close()

    asyncio.run(main())


def test_datapath_thread_can_be_turned_off() -> None:
    """``datapath_thread = false``: the event loop polls and pumps, forwarding the same."""

    async def main() -> None:
        port = _free_port()
        cfg_a = dataclasses.replace(_cfg(A_IP, B_IP, MAC_A, port, True), datapath_thread=False)
        a = Vtep(cfg_a, devices=(da := MemoryTaps()))
        b = Vtep(_cfg(B_IP, A_IP, MAC_B, port, True), devices=(db := MemoryTaps()))
        await a.start()
        await b.start()
        try:
            assert not a.datapath_thread and not a.stats()["datapath_thread"]
            frame = _udp(MAC_A, "ff:ff:ff:ff:ff:ff", 1)
            da.taps["vx0"].inject(frame)
            assert [f for _h, f in await _got(db.taps["vx0"])] == [frame]
        finally:
            await b.close()
            await a.close()
        assert a.datapath_thread is False and b.datapath_thread is (b.pumps is not None)

    asyncio.run(main())


def test_events_subscribed_from_the_call_not_the_first_iteration() -> None:
    """`vxlanpy-tunnel run -v` asks for the stream before start(): what the VTEP reports before
    the consumer first iterates (a peer watch's early mismatch) reaches it, in order."""

    async def main() -> None:
        v = Vtep(_cfg(A_IP, B_IP, MAC_A, _free_port(), False))
        stream = v.events()
        first = PeerMismatch(remote=B_IP, kinds=("zero-checksum",), hint="h")
        second = PeerMismatch(remote="127.0.0.9", kinds=("checksum",), hint="h")
        v._publish(first)  # before any iteration
        v._publish(second)
        got = [await asyncio.wait_for(stream.__anext__(), 2) for _ in range(2)]
        assert got == [first, second]
        await stream.aclose()
        assert v._subscribers == []  # closed: unsubscribed

    asyncio.run(main())
