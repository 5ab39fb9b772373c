"""complete_checksums: finishing TCP/UDP checksums a checksum-offloading sender left partial.

A Linux peer with checksum offload (CHECKSUM_PARTIAL) puts only the folded, not complemented,
pseudo-header sum in the L4 checksum field. The kernel must replace exactly that value with the
full checksum and leave correct and otherwise wrong checksums alone. scapy's checksums are the
oracle; the pseudo-header value is computed here from scapy's fields, not by vxlanpy.
"""

from __future__ import annotations

import ipaddress
import os
import random
import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

from vxlanpy import kernels as kernels_mod
from vxlanpy.batch import FrameBatch
from vxlanpy.kernels import Backend

SETTINGS = settings(deadline=None, max_examples=60)

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def ones_sum(data: bytes) -> int:
    """Folded one's-complement sum of big-endian 16-bit words (RFC 1071)."""
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def layout(frame: bytes) -> tuple[int, int]:
    """(offset of the checksum field in ``frame``, the partial value: folded pseudo-header sum)."""
    pkt = Ether(frame)
    if IP in pkt:
        ip = pkt[IP]
        l4off = 14 + ip.ihl * 4
        l4len = ip.len - ip.ihl * 4
        pseudo = ipaddress.IPv4Address(ip.src).packed + ipaddress.IPv4Address(ip.dst).packed
        pseudo += struct.pack("!BBH", 0, ip.proto, l4len)
        proto = ip.proto
    else:
        ip6 = pkt[IPv6]
        l4off = 14 + 40
        pseudo = ipaddress.IPv6Address(ip6.src).packed + ipaddress.IPv6Address(ip6.dst).packed
        pseudo += struct.pack("!IxxxB", ip6.plen, ip6.nh)
        proto = ip6.nh
    return l4off + (16 if proto == 6 else 6), ones_sum(pseudo)


def with_field(frame: bytes, off: int, value: int) -> bytes:
    return frame[:off] + struct.pack("!H", value) + frame[off + 2 :]


def run(kernels: Backend, *frames: bytes) -> tuple[int, list[bytes]]:
    batch = FrameBatch(len(frames), max(max(map(len, frames)), 14))
    for f in frames:
        batch.append_frame(f)
    fixed = kernels.complete_checksums(batch)
    return fixed, [bytes(batch.frame(i)) for i in range(batch.count)]


@st.composite
def l4_packets(draw: st.DrawFn, tcp: bool | None = None, v6: bool | None = None) -> Packet:
    """Ethernet/IPv4-or-IPv6/TCP-or-UDP with scapy's (correct) checksum, odd and even sizes."""
    if v6 is None:
        v6 = draw(st.booleans())
    if tcp is None:
        tcp = draw(st.booleans())
    l3: Packet
    if v6:
        l3 = IPv6(src=str(draw(st.ip_addresses(v=6))), dst=str(draw(st.ip_addresses(v=6))))
    else:
        l3 = IP(
            src=str(draw(st.ip_addresses(v=4))),
            dst=str(draw(st.ip_addresses(v=4))),
            flags=draw(st.sampled_from(["", "DF"])),
            options=[IPOption_NOP()] * draw(st.sampled_from([0, 0, 4, 8])),
        )
    sport, dport = draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF))
    if tcp:
        l4: Packet = TCP(sport=sport, dport=dport, seq=draw(st.integers(0, 2**32 - 1)))
        if draw(st.booleans()):
            l4.options = [("MSS", draw(st.integers(0, 0xFFFF))), ("NOP", None)]
    else:
        l4 = UDP(sport=sport, dport=dport)
    return ETH / l3 / l4 / Raw(draw(st.binary(max_size=80)))


padding = st.one_of(st.just(b""), st.binary(min_size=1, max_size=24))


# --- Correct, partial, wrong ------------------------------------------------------------------


@SETTINGS
@given(pkt=l4_packets(), pad=padding)
def test_correct_checksums_unchanged(kernels: Backend, pkt: Packet, pad: bytes) -> None:
    frame = bytes(pkt) + pad
    assert run(kernels, frame) == (0, [frame])


@SETTINGS
@given(pkt=l4_packets(), pad=padding)
def test_partial_checksum_completed(kernels: Backend, pkt: Packet, pad: bytes) -> None:
    good = bytes(pkt)
    off, partial = layout(good)
    frame = with_field(good, off, partial) + pad
    fixed, out = run(kernels, frame)
    assert out == [good + pad]  # exactly scapy's checksum; the padding is not summed or touched
    assert fixed == (0 if frame == good + pad else 1)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("tcp", [True, False], ids=["tcp", "udp"])
def test_partial_checksum_completed_each_kind(kernels: Backend, tcp: bool, v6: bool) -> None:
    """One frame per kind, batched together with their correct twins."""
    rng = random.Random(1)
    goods = [
        bytes(
            ETH
            / (IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2"))
            / (TCP(sport=1234, dport=80) if tcp else UDP(sport=1234, dport=53))
            / Raw(rng.randbytes(n))
        )
        for n in (0, 1, 2, 99, 1400)
    ]
    partials = []
    for g in goods:
        off, partial = layout(g)
        partials.append(with_field(g, off, partial))
    fixed, out = run(kernels, *partials, *goods)
    assert fixed == len(goods)
    assert out == goods + goods


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("tcp", [True, False], ids=["tcp", "udp"])
def test_computed_zero(kernels: Backend, tcp: bool, v6: bool) -> None:
    """A checksum that computes to 0 is written as 0xFFFF for UDP (0 means none), 0 for TCP."""
    l3 = IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2")
    l4 = TCP(sport=1, dport=2) if tcp else UDP(sport=1, dport=2)
    base = ETH / l3 / l4
    c0 = Ether(bytes(base / Raw(b"\x00\x00")))[TCP if tcp else UDP].chksum
    good = bytes(base / Raw(struct.pack("!H", c0)))  # a payload word that cancels the sum
    off, partial = layout(good)
    assert good[off : off + 2] == (b"\x00\x00" if tcp else b"\xff\xff")
    assert run(kernels, with_field(good, off, partial)) == (1, [good])


@SETTINGS
@given(pkt=l4_packets(), field=st.integers(0, 0xFFFF), pad=padding)
def test_wrong_checksums_unchanged(kernels: Backend, pkt: Packet, field: int, pad: bytes) -> None:
    good = bytes(pkt)
    off, partial = layout(good)
    (correct,) = struct.unpack_from("!H", good, off)
    assume(field != partial)
    assume(field % 0xFFFF != correct % 0xFFFF)  # 0 and 0xFFFF are the same one's-complement sum
    frame = with_field(good, off, field) + pad
    assert run(kernels, frame) == (0, [frame])


@SETTINGS
@given(pkt=l4_packets(tcp=False, v6=False))
def test_udp_ipv4_without_checksum_unchanged(kernels: Backend, pkt: Packet) -> None:
    unchecked = pkt.copy()
    unchecked[UDP].chksum = 0
    frame = bytes(unchecked)
    off, _ = layout(frame)
    assert frame[off : off + 2] == b"\x00\x00"
    assert run(kernels, frame) == (0, [frame])


@SETTINGS
@given(pkts=st.lists(l4_packets(), min_size=1, max_size=4), vni=st.integers(0, 0xFFFFFF))
def test_receive_path(kernels: Backend, pkts: list[Packet], vni: int) -> None:
    """decap_batch then complete_checksums on datagrams a checksum-offloading peer sent."""
    goods = [bytes(p) for p in pkts]
    batch = FrameBatch(len(goods), max(map(len, goods)))
    for g in goods:
        batch.append_payload(bytes(VXLAN(flags=0x08, vni=vni)) + _partial(g))
    kernels.decap_batch(batch, True)
    assert list(batch.status) == [0] * len(goods)
    kernels.complete_checksums(batch)
    assert [bytes(batch.frame(i)) for i in range(batch.count)] == goods


# --- Frames outside the contract are left alone, partial-looking field or not -----------------


def _partial(frame: bytes) -> bytes:
    off, partial = layout(frame)
    return with_field(frame, off, partial)


def _udp4(**ip: object) -> bytes:
    l3 = IP(src="10.0.0.1", dst="10.0.0.2", **ip)
    return bytes(ETH / l3 / UDP(sport=7, dport=9) / Raw(b"x" * 30))


def _cases() -> list[tuple[str, bytes]]:
    """Frames whose checksum field holds the partial value, but which the contract excludes."""
    udp4 = _partial(_udp4())
    tcp6 = _partial(bytes(ETH / IPv6(src="fd00::1", dst="fd00::2") / TCP() / Raw(b"y" * 9)))
    hop = bytearray(
        bytes(
            ETH / IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop() / UDP(sport=7, dport=9)
        )
    )
    addrs = bytes(hop[22:54])
    struct.pack_into("!H", hop, 14 + 48 + 6, ones_sum(addrs + struct.pack("!IxxxB", 8, 17)))
    l4_7 = bytearray(udp4)
    struct.pack_into("!H", l4_7, 16, 20 + 7)  # IPv4 total length: a 7-byte "UDP header"
    tcp_19 = bytearray(tcp6)
    struct.pack_into("!H", tcp_19, 18, 19)  # IPv6 payload length 19: short of a TCP header
    return [
        ("vlan-tagged", udp4[:12] + b"\x81\x00\x00\x07" + udp4[12:]),
        ("ipv4-more-fragments", _partial(_udp4(flags="MF"))),
        ("ipv4-fragment-offset", _partial(_udp4(frag=8))),
        ("ipv6-extension-header", bytes(hop)),
        ("icmp", bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP() / Raw(b"z" * 20))),
        ("ipv4-truncated", udp4[:-1]),
        ("ipv6-truncated", tcp6[:-1]),
        ("ipv4-header-cut", udp4[: 14 + 19]),
        ("ipv6-header-cut", tcp6[: 14 + 39]),
        ("ipv4-l4-too-short", bytes(l4_7)),
        ("ipv6-l4-too-short", bytes(tcp_19)),
        ("ipv4-ihl-4", udp4[:14] + b"\x44" + udp4[15:]),
        ("ipv4-version-6", udp4[:14] + b"\x65" + udp4[15:]),
        ("ipv6-version-4", tcp6[:14] + b"\x40" + tcp6[15:]),
        ("arp-ethertype", udp4[:12] + b"\x08\x06" + udp4[14:]),
        ("ethernet-only", udp4[:14]),
        ("runt", udp4[:13]),
        ("empty", b""),
    ]


CASES = _cases()


@pytest.mark.parametrize(("name", "frame"), CASES, ids=[n for n, _ in CASES])
def test_outside_contract_unchanged(kernels: Backend, name: str, frame: bytes) -> None:
    batch = FrameBatch(1, 200)
    batch.append_frame(frame)
    assert kernels.complete_checksums(batch) == 0, name
    assert bytes(batch.frame(0)) == frame


def test_only_slots_below_count(kernels: Backend) -> None:
    frame = _partial(_udp4())
    batch = FrameBatch(3, 100)
    for _ in range(3):
        batch.append_frame(frame)
    batch.count = 2
    assert kernels.complete_checksums(batch) == 2
    batch.count = 3
    assert bytes(batch.frame(2)) == frame
    assert kernels.complete_checksums(batch) == 1
    assert kernels.complete_checksums(batch) == 0


# --- Both backends, random input --------------------------------------------------------------


@st.composite
def mixed_frames(draw: st.DrawFn) -> bytes:
    """Partial, correct and wrong frames, mutated or cut short, and plain noise."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.binary(max_size=120))
    frame = bytes(draw(l4_packets()))
    off, partial = layout(frame)
    if kind == 1:
        frame = with_field(frame, off, partial)
    elif kind == 2:
        frame = with_field(frame, off, draw(st.integers(0, 0xFFFF)))
    elif kind == 3:
        frame = with_field(frame, off, partial)
        mutated = bytearray(frame)
        for _ in range(draw(st.integers(1, 3))):
            mutated[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
        frame = bytes(mutated)
    return frame[: draw(st.integers(0, len(frame)))] if draw(st.booleans()) else frame


@pytest.fixture(scope="module")
def both() -> tuple[Backend, Backend]:
    try:
        return kernels_mod.load("cffi"), kernels_mod.load("python")
    except ImportError:
        if os.environ.get("VXLANPY_REQUIRE_C") == "1" or os.environ.get("CI") == "true":
            raise
        pytest.skip("C fast path not built")


@settings(deadline=None, max_examples=120)
@given(
    frames=st.lists(mixed_frames(), min_size=1, max_size=6),
    headroom=st.integers(8, 40),
    seed=st.integers(0, 2**32 - 1),
    corrupt=st.lists(st.integers(0, 5), max_size=2),
)
def test_backends_agree_on_random_batches(
    both: tuple[Backend, Backend],
    frames: list[bytes],
    headroom: int,
    seed: int,
    corrupt: list[int],
) -> None:
    """Byte-equal results, and nothing outside the frames read or written: the bytes around
    each frame are garbage that differs between two runs, and must not change the frames."""
    c, py = both
    size = len(FrameBatch(len(frames), max(14, *map(len, frames)), headroom).buf)
    outcomes = []
    for junk in (random.Random(seed).randbytes(size), random.Random(~seed).randbytes(size)):
        for backend in (c, py):
            batch = FrameBatch(len(frames), max(14, *map(len, frames)), headroom)
            batch.buf[:] = junk
            for f in frames:
                batch.append_frame(f)
            for i in corrupt:  # a length beyond the slot: the slot is skipped
                if i < batch.count:
                    batch.frame_len[i] = batch.slot - batch.headroom + 1 + i
            fixed = backend.complete_checksums(batch)
            out = bytearray(batch.buf)
            views = []
            for i, f in enumerate(frames):
                off = batch.frame_offset(i)
                views.append(bytes(out[off : off + len(f)]))
                out[off : off + len(f)] = junk[off : off + len(f)]
                if i in corrupt:
                    assert views[i] == f
            assert out == junk  # nothing written outside the frames
            outcomes.append((fixed, views))
    assert outcomes[0] == outcomes[1]  # C and Python, same garbage around the frames
    assert outcomes[0] == outcomes[2]  # other garbage: same result, so none of it was read
    assert outcomes[2] == outcomes[3]


@settings(deadline=None, max_examples=150)
@given(frame=st.binary(max_size=100))
def test_random_bytes_no_crash(both: tuple[Backend, Backend], frame: bytes) -> None:
    c, py = both
    assert run(c, frame) == run(py, frame)


@SETTINGS
@given(data=st.binary(max_size=4100), start=st.integers(0, 7))
def test_c_sum_is_the_folded_ones_complement_sum(data: bytes, start: int) -> None:
    """vx_csum16, the C checksum loop (32 bytes a step) behind complete_checksums, TSO and
    GRO coalescing, at any alignment and length, against RFC 1071 computed here."""
    c = pytest.importorskip("vxlanpy._native")
    buf = bytes(start) + data
    assert c.lib.vx_csum16(c.ffi.from_buffer(buf) + start, len(data)) == ones_sum(data)
