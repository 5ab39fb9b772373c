"""A wrong inner checksum stays wrong: whatever path a received frame takes (C pumps or the
Python engine; a small frame, a super-frame received whole, a UDP GRO receive), it never reaches
the TAP with a checksum that verifies, nor flagged for the kernel to compute one (NEEDS_CSUM).
A frame left in the partial state by a checksum-offloading sender is completed, and a verified
oversized one goes to the TAP as a GSO frame: those are the controls.

No root: the devices are io/memory.py's doubles and the underlay is UDP on loopback; the
datagrams are built with scapy and sent from a plain socket, as a remote VTEP would."""

from __future__ import annotations

import asyncio
import socket

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from test_memory_vtep import FAST, _cfg, _free_port

from vxlanpy.io.memory import MemoryTaps
from vxlanpy.tunnel import Vtep

ME, PEER = "127.0.0.1", "127.0.0.2"
MAC_ME, MAC_PEER = "02:00:00:00:01:0a", "02:00:00:00:01:0b"
UDP_SEGMENT = 103


def _tcp(size: int, seq: int = 1000, corrupt: bool = False, partial: bool = False) -> bytes:
    pkt = (
        Ether(src=MAC_PEER, dst=MAC_ME)
        / IP(src="192.0.2.2", dst="192.0.2.1", id=1)
        / TCP(sport=5201, dport=40000, seq=seq, flags="A")
        / Raw(bytes((seq + k) & 0xFF for k in range(size)))
    )
    f = bytearray(bytes(pkt))
    if partial:  # what a checksum-offloading sender leaves: the folded pseudo-header sum
        words = bytes(f[26:34]) + bytes([0, 6]) + (len(f) - 34).to_bytes(2, "big")
        s = sum(int.from_bytes(words[i : i + 2], "big") for i in range(0, len(words), 2))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        f[50:52] = s.to_bytes(2, "big")
    if corrupt:
        f[-1] ^= 0x5A
    return bytes(f)


def _verifies(frame: bytes) -> bool:
    p = Ether(frame)
    got = p[TCP].chksum
    del p[TCP].chksum
    return bool(Ether(bytes(p))[TCP].chksum == got)


def _vxlan(frame: bytes, vni: int = 42) -> bytes:
    return b"\x08\x00\x00\x00" + vni.to_bytes(3, "big") + b"\x00" + frame


async def _exchange(fast: bool, sends: list[list[bytes]]) -> list[tuple[bytes, bytes]]:
    """Start a VTEP on ME, send each list of payloads from PEER (several: one UDP GSO send),
    return what its TAP got (virtio-net header, frame)."""
    port = _free_port()
    devices = MemoryTaps()
    vtep = Vtep(_cfg(ME, PEER, MAC_ME, port, fast), devices=devices)
    await vtep.start()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tx.bind((PEER, 0))
        for payloads in sends:
            if len(payloads) > 1:
                size = len(payloads[0]).to_bytes(2, "little")
                cmsg = [(socket.IPPROTO_UDP, UDP_SEGMENT, size)]
                tx.sendmsg([b"".join(payloads)], cmsg, 0, (ME, port))
            else:
                tx.sendto(payloads[0], (ME, port))
            await asyncio.sleep(0.05)
        tap = devices.taps["vx0"]
        return await asyncio.to_thread(tap.received, 0.5)
    finally:
        tx.close()
        await vtep.close()


def _no_valid_checksum(header: bytes, frame: bytes) -> None:
    assert not header[0] & 1, "flagged NEEDS_CSUM: the kernel would compute a fresh checksum"
    assert not _verifies(frame), "the checksum verifies"


@pytest.mark.parametrize("fast", FAST, ids=lambda f: "c-pumps" if f else "python")
@pytest.mark.parametrize("size", [100, 8000], ids=["small", "whole-super-frame"])
def test_a_corrupted_tcp_segment_stays_invalid(fast: bool, size: int) -> None:
    bad, good, partial = _tcp(size, corrupt=True), _tcp(size), _tcp(size, partial=True)
    got = asyncio.run(_exchange(fast, [[_vxlan(f)] for f in (bad, good, partial)]))
    assert [f for _h, f in got][0] == bad  # delivered byte for byte: the stack drops it
    _no_valid_checksum(*got[0])
    h_good, f_good = got[1]
    h_part, f_part = got[2]
    if size > 1464:  # longer than the TAP's MTU (1450) + 14: a GSO frame, the kernel finishes
        assert h_good[:2] == b"\x01\x01" and h_part[:2] == b"\x01\x01"
    else:
        assert _verifies(f_good) and _verifies(f_part)  # the partial one was completed


@pytest.mark.skipif(True not in FAST, reason="UDP GRO is the C receive pump's")
def test_a_corrupted_segment_in_a_gro_receive_is_not_merged() -> None:
    mss = 1400
    segs = [_tcp(mss, seq=1000 + k * mss) for k in range(5)]
    segs[2] = _tcp(mss, seq=1000 + 2 * mss, corrupt=True)
    got = asyncio.run(_exchange(True, [[_vxlan(f) for f in segs]]))
    assert [f for _h, f in got] == segs  # split, in order, each as it came
    for k, (h, f) in enumerate(got):
        if k == 2:
            _no_valid_checksum(h, f)
        else:
            assert _verifies(f)
