"""Sends the kernel refuses are not counted as sent, on loopback (no root): the I/O backend's
batched send is made to find room for only a few datagrams, as a full send buffer does
(``tests/netns/test_faults.py::test_send_buffer_full`` fills a real one). The transport says
what it could not send and the engine takes it back from ``tx_packets`` / ``tx_bytes``, as
the C datapath counts (``vx_count_send``); the rest is ``EAGAIN``."""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest

from vxlanpy.batch import FrameBatch
from vxlanpy.engine import Engine, SegmentConfig
from vxlanpy.headers import Outer
from vxlanpy.io import batchio
from vxlanpy.io.udp import UdpTransport

LO = "127.0.0.1"
VNI = 42
HEAD = b"\x02\x00\x00\x00\x00\x09" + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5"


class _Full:
    """An I/O backend whose sockets have room for ``room`` more datagrams in all."""

    def __init__(self, io: Any, room: int) -> None:
        self.io, self.room = io, room

    def udp_send(
        self,
        sock: socket.socket,
        batch: FrameBatch,
        first: int,
        n: int,
        host: str,
        port: int,
        outer: Outer | None = None,
    ) -> int:
        k = min(n, self.room)
        if k == 0:
            return -errno.EAGAIN
        self.room -= k
        return int(self.io.udp_send(sock, batch, first, k, host, port, outer))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.io, name)


@pytest.mark.parametrize("name", ["cffi", "python"])
def test_refused_sends_are_not_counted_as_sent(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batchio, "backend", _Full(batchio.load(name), 5))
    frames = [HEAD + bytes(range(50 + k)) for k in range(12)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind((LO, 0))
        peer.settimeout(2)
        engine = Engine(backend=name, dstport=peer.getsockname()[1])
        engine.add_segment(SegmentConfig(VNI, remotes=(LO,)))
        t = UdpTransport(port=0, local=LO)
        try:
            batch = FrameBatch(16, 1600)
            for f in frames:
                batch.append_frame(f)
            engine.handle_frames(VNI, batch, 0.0)
            refused = t.send_datagrams(batch, engine.datagrams_to_send())
            engine.not_sent(VNI, *refused)
        finally:
            t.close()
        got = [peer.recv(2048)[8:] for _ in range(5)]
    c = engine.segment(VNI).counters
    assert refused == (7, sum(len(f) for f in frames[5:]))
    assert (c.tx_packets, c.tx_bytes) == (5, sum(len(f) for f in frames[:5]))
    assert t.errors["EAGAIN"] == 7 and t.tx_packets == 5
    assert got == frames[:5]
