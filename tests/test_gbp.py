"""VXLAN-GBP (gbp.py and the engine): headers as scapy's VXLAN-GBP layer writes and reads them,
groups per segment and per source MAC, the D bit obeyed, strict parsing, per-group counters,
chunks of a cut super-frame keeping the group; the C backend and the Python twin alike."""

from __future__ import annotations

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from vxlanpy import gbp, kernels, stats
from vxlanpy.abi import Offload
from vxlanpy.batch import FrameBatch
from vxlanpy.engine import Engine, SegmentConfig
from vxlanpy.events import MacLearned
from vxlanpy.gbp import Policy
from vxlanpy.io import batchio
from vxlanpy.wire import DropReason, encode_header, parse_mac

BACKENDS = ["python"] + (["cffi"] if kernels.native("cffi") is not None else [])
VNI, PLAIN = 42, 43
HOST, OTHER, PEER = parse_mac("02:00:00:00:00:0a"), parse_mac("02:00:00:00:00:0b"), "198.18.0.2"


def frame(src: bytes, dst: str = "02:00:00:00:00:99") -> bytes:
    return raw(Ether(src=src, dst=dst) / IP(src="198.19.0.1", dst="198.19.0.2") / UDP() / b"hi")


def engine(backend: str, strict: bool = False) -> Engine:
    e = Engine(backend=backend, strict=strict)
    e.add_segment(
        SegmentConfig(
            vni=VNI,
            remotes=[PEER],
            gbp=True,
            gbp_group=Policy(0x1234),
            gbp_macs={OTHER: Policy(7, dont_learn=True, applied=True)},
        )
    )
    e.add_segment(SegmentConfig(vni=PLAIN, remotes=[PEER]))
    return e


def test_policy_text_and_mark() -> None:
    assert Policy.parse("0x10/A") == Policy(16, applied=True)
    assert Policy.parse("65535/D/A") == Policy(0xFFFF, True, True)
    assert Policy.parse(9) == Policy(9)
    assert str(Policy(16, True, True)) == "0x0010/D/A"
    assert Policy(0x1234, dont_learn=True).mark == 0x401234  # the kernel's mark bits
    assert Policy(0x1234, applied=True).mark == 0x81234
    for bad in ("65536", "0x10/X", "", "-1", "1/"):
        with pytest.raises(ValueError):
            Policy.parse(bad)
    with pytest.raises(ValueError):
        Policy.parse(True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sent_headers_equal_scapys(backend: str) -> None:
    e = engine(backend)
    e.handle_frame(VNI, frame(HOST), 1.0)
    e.handle_frame(VNI, frame(OTHER), 1.0)
    e.handle_frame(PLAIN, frame(HOST), 1.0)
    got = [bytes(d.payload) for d in e.datagrams_to_send()]
    want = [
        VXLAN(flags="Instance+G", gpid=0x1234, vni=VNI) / Ether(frame(HOST)),
        VXLAN(flags="Instance+G", gpflags="D+A", gpid=7, vni=VNI) / Ether(frame(OTHER)),
        VXLAN(flags="Instance", vni=PLAIN) / Ether(frame(HOST)),
    ]
    assert got == [raw(p) for p in want]
    # and scapy reads them back
    assert VXLAN(got[1]).gpid == 7 and "D" in VXLAN(got[1]).gpflags
    tx = stats.segment_stats(e, VNI)["gbp"]["tx"]
    assert tx == {"0x0007/D/A": 1, "0x1234": 1}
    assert "gbp" not in stats.segment_stats(e, PLAIN)


@pytest.mark.parametrize("backend", BACKENDS)
def test_received_groups_counted_and_d_obeyed(backend: str) -> None:
    e = engine(backend)
    marked = raw(VXLAN(flags="Instance+G", gpid=0x42, vni=VNI) / Ether(frame(HOST)))
    dont = raw(VXLAN(flags="Instance+G", gpflags="D", gpid=0x43, vni=VNI) / Ether(frame(OTHER)))
    plain = raw(VXLAN(flags="Instance", vni=VNI) / Ether(frame(parse_mac("02:00:00:00:00:0c"))))
    for p in (marked, dont, plain):
        e.handle_datagram(p, PEER, 1.0)
    assert len(e.frames_to_device()) == 3  # all delivered
    seg = e.segment(VNI)
    assert seg.fdb.lookup(HOST) is not None and seg.fdb.lookup(OTHER) is None  # D: not learned
    learned = [ev for ev in e.events() if isinstance(ev, MacLearned)]
    assert [(ev.mac, ev.group) for ev in learned] == [
        (HOST, "0x0042"),
        (parse_mac("02:00:00:00:00:0c"), None),
    ]
    assert stats.segment_stats(e, VNI)["gbp"]["rx"] == {"0x0042": 1, "0x0043/D": 1, "none": 1}


@pytest.mark.parametrize("backend", BACKENDS)
def test_strict_parsing_with_gbp(backend: str) -> None:
    """Strict: on the GBP segment the GBP bits are no reserved bits, but only with G; on the
    other segment they are (the kernel drops a frame with bits it does not parse)."""
    e = engine(backend, strict=True)
    cases = [
        (b"\x88\x48\x12\x34", VNI, True),
        (b"\x08\x00\x12\x34", VNI, False),  # a group without G
        (b"\x88\x00\x00\x01", PLAIN, False),
        (b"\x08\x00\x00\x00", PLAIN, True),
        (b"\x8c\x00\x00\x01", VNI, False),  # another reserved bit in the first byte
    ]
    for word0, vni, ok in cases:
        e.handle_datagram(word0 + encode_header(vni)[4:] + frame(HOST), PEER, 1.0)
        assert len(e.frames_to_device()) == int(ok), (word0.hex(), vni)
    assert e.counters.drops[DropReason.RESERVED_BITS] == 3


def _super_frame(batch: FrameBatch, mss: int) -> int:
    payload = bytes(range(256)) * 20
    pkt = (
        Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b")
        / IP(src="198.19.0.1", dst="198.19.0.2")
        / TCP(sport=1000, dport=2000, flags="A")
        / payload
    )
    i = batch.append_frame(raw(pkt), VNI)
    batch.gso_type[i] = 1  # TCPv4
    batch.gso_size[i] = mss
    batch.offload[i] = Offload.NEEDS_CSUM
    return i


@pytest.mark.parametrize("backend", BACKENDS)
def test_cut_super_frame_chunks_keep_the_group(backend: str) -> None:
    b = FrameBatch(2, 9000)
    i = _super_frame(b, 1400)
    kernels.load(backend).encap_batch(b, 49152, 65535)
    gbp.write(b.buf, b.header_offset(i), Policy(0x55, applied=True))
    scratch = FrameBatch(64, 1600)
    k = batchio.load(backend).prepare_super(b, i, VNI, scratch, 49152, 65535)
    assert k == 4
    for j in range(k):
        h = bytes(scratch.buf[scratch.header_offset(j) : scratch.header_offset(j) + 8])
        assert gbp.read(h) == Policy(0x55, applied=True) and h[4:7] == VNI.to_bytes(3, "big")
