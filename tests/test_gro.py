"""gro_coalesce: turning a UDP GRO receive (VXLAN datagrams back to back) into one VXLAN datagram
carrying one TCP super-frame.

The segments are cut from a scapy-built super-frame by the project's own TSO kernel, so a good
coalesce gives back exactly that super-frame; scapy is the oracle for its checksums. Rejected
inputs are otherwise valid buffers with one thing changed (checksums recomputed unless the
checksum is the thing): each must give 0 and leave the buffer as it was.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from vxlanpy import kernels as kernels_mod
from vxlanpy.batch import FrameBatch
from vxlanpy.kernels import Backend
from vxlanpy.wire import encode_header

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
VNI = 0x123456

TCP_OPTIONS: list[list[tuple[str, Any]]] = [
    [],
    [("NOP", None), ("NOP", None), ("Timestamp", (123456789, 987654321))],
    [("MSS", 1398), ("SAckOK", b""), ("WScale", 7), ("NOP", None)],  # 11 bytes: padded to 12
]


@pytest.fixture(scope="module")
def both() -> tuple[Backend, Backend]:
    try:
        return kernels_mod.load("cffi"), kernels_mod.load("python")
    except ImportError:
        if os.environ.get("VXLANPY_REQUIRE_C") == "1" or os.environ.get("CI") == "true":
            raise
        pytest.skip("C fast path not built")


def cut(backend: Backend, frame: bytes, mss: int) -> list[bytes]:
    """The TSO kernel's segments of the super-frame ``frame``."""
    src = FrameBatch(1, len(frame))
    src.append_frame(frame)
    out = FrameBatch(-(-len(frame) // mss) + 1, 14 + 60 + 60 + mss)
    assert backend.tso_segment(src, 0, mss, out) > 0
    return [bytes(out.frame(i)) for i in range(out.count)]


def gro(frames: list[bytes], vnis: list[int] | None = None) -> tuple[bytearray, int]:
    """The GRO layout of ``frames`` each in a VXLAN datagram: concatenated, seg the first's size
    (TSO segments are all one size but the last, so there is nothing to pad)."""
    vnis = vnis or [VNI] * len(frames)
    datagrams = [encode_header(v) + f for v, f in zip(vnis, frames, strict=True)]
    return bytearray(b"".join(datagrams)), len(datagrams[0])


def redo(pkt: Packet) -> bytes:
    """``pkt`` built by scapy with its IP length and IP and TCP checksums computed afresh."""
    if IP in pkt:
        del pkt[IP].chksum
        del pkt[IP].len
    else:
        del pkt[IPv6].plen
    del pkt[TCP].chksum
    return bytes(pkt)


def oracle(frame: bytes) -> bytes:
    """scapy's rebuild of ``frame`` with its lengths and checksums computed afresh."""
    return redo(Ether(frame))


def coalesce(backend: Backend, buf: bytearray, seg: int) -> tuple[int, bytes]:
    work = bytearray(buf)
    n = backend.gro_coalesce(work, len(work), seg)
    return n, bytes(work[:n])


# --- Round trip: the segments of a super-frame give back the super-frame ----------------------


@st.composite
def headers(draw: st.DrawFn) -> tuple[Packet, Packet]:
    """(IPv4 or IPv6 header, TCP header) templates of an established stream: ACK, PSH or not."""
    l3: Packet
    if draw(st.booleans()):
        l3 = IPv6(
            src=str(draw(st.ip_addresses(v=6))),
            dst=str(draw(st.ip_addresses(v=6))),
            tc=draw(st.integers(0, 255)),
            fl=draw(st.integers(0, 0xFFFFF)),
            hlim=draw(st.integers(0, 255)),
        )
    else:
        options = draw(
            st.sampled_from(
                [[], [IPOption_NOP()] * 4, [IPOption_Router_Alert()], [IPOption_NOP()] * 40]
            )
        )
        l3 = IP(
            src=str(draw(st.ip_addresses(v=4))),
            dst=str(draw(st.ip_addresses(v=4))),
            id=draw(st.one_of(st.integers(0, 0xFFFF), st.integers(0xFFF0, 0xFFFF))),
            flags=draw(st.sampled_from(["", "DF"])),
            ttl=draw(st.integers(0, 255)),
            tos=draw(st.integers(0, 255)),
            options=options,
        )
    tcp = TCP(
        sport=draw(st.integers(0, 0xFFFF)),
        dport=draw(st.integers(0, 0xFFFF)),
        seq=draw(st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32 - 70000, 2**32 - 1))),
        ack=draw(st.integers(0, 2**32 - 1)),
        flags=draw(st.sampled_from(["A", "PA"])),
        window=draw(st.integers(0, 0xFFFF)),
        urgptr=draw(st.integers(0, 0xFFFF)),
        options=draw(st.sampled_from(TCP_OPTIONS)),
    )
    return l3, tcp


@settings(deadline=None, max_examples=80)
@given(
    hdrs=headers(),
    mss=st.one_of(st.sampled_from([1, 3, 536, 1398, 1447, 1448]), st.integers(1, 2000)),
    n=st.integers(2, 20),
    tail=st.integers(0, 2000),
    vni=st.integers(0, 0xFFFFFF),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip(
    both: tuple[Backend, Backend],
    hdrs: tuple[Packet, Packet],
    mss: int,
    n: int,
    tail: int,
    vni: int,
    seed: int,
) -> None:
    l3, tcp = hdrs
    payload = random.Random(seed).randbytes((n - 1) * mss + tail % mss + 1)  # last: 1..mss
    frame = bytes(ETH / l3 / tcp / Raw(payload))
    segments = cut(both[0], frame, mss)
    assert len(segments) == n
    buf, seg = gro(segments, [vni] * n)
    results = [coalesce(backend, buf, seg) for backend in both]
    assert results[0] == results[1]  # C and Python: same length, same bytes
    length, merged = results[0]
    assert length == 8 + len(frame)
    assert merged == encode_header(vni) + frame
    assert oracle(merged[8:]) == merged[8:]  # lengths and checksums as scapy computes them


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("mss", [1, 7, 1447, 1448, 8948])
def test_full_64k_super_frame(kernels: Backend, v6: bool, mss: int) -> None:
    """The largest merge: a 65535-byte IP length, odd MSS putting payloads at odd offsets."""
    l3: Packet = (
        IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2", id=3)
    )
    tcp = TCP(sport=5201, dport=40000, seq=2**32 - 5000, flags="PA", options=TCP_OPTIONS[1])
    ip_payload = 0xFFFF if v6 else 0xFFFF - len(l3)
    payload = random.Random(mss).randbytes(ip_payload - len(tcp))
    frame = bytes(ETH / l3 / tcp / Raw(payload))
    buf, seg = gro(cut(kernels, frame, mss))
    assert coalesce(kernels, buf, seg) == (8 + len(frame), encode_header(VNI) + frame)


def test_merged_length_over_65535(kernels: Backend) -> None:
    """Two super-frames of one stream that together exceed an IP length of 65535: refused; one
    byte less is merged."""
    mss = 1448
    l3 = IP(src="10.0.0.1", dst="10.0.0.2")
    first = random.Random(1).randbytes(30 * mss)
    for extra in (1, 0):
        second = random.Random(2).randbytes(0xFFFF - 20 - 20 - len(first) + extra)
        a = bytes(ETH / l3 / TCP(seq=1000, flags="A") / Raw(first))
        b = bytes(ETH / l3 / TCP(seq=1000 + len(first), flags="A") / Raw(second))
        buf, seg = gro(cut(kernels, a, mss) + cut(kernels, b, mss))
        if extra:
            assert coalesce(kernels, buf, seg) == (0, b"")
        else:
            whole = bytes(ETH / l3 / TCP(seq=1000, flags="A") / Raw(first + second))
            assert coalesce(kernels, buf, seg) == (8 + len(whole), encode_header(VNI) + whole)


def test_rewrites_only_the_merged_prefix_in_place(kernels: Backend) -> None:
    """The merged datagram starts at the buffer's start; bytes past ``length`` are not touched."""
    frame = bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="A") / Raw(b"m" * 300))
    buf, seg = gro(cut(kernels, frame, 100))
    length = len(buf)
    buf += b"\xee" * 50
    assert kernels.gro_coalesce(buf, length, seg) == 8 + len(frame)
    assert bytes(buf[: 8 + len(frame)]) == encode_header(VNI) + frame
    assert bytes(buf[length:]) == b"\xee" * 50


# --- Refused: 0 and the buffer untouched ------------------------------------------------------

Frames = list[bytes]


def base(v6: bool = False) -> Frames:
    """Four segments of 100 bytes and a last of 37, PSH on the last: a valid GRO receive."""
    l3: Packet = IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2")
    tcp = TCP(sport=40000, dport=5201, seq=77, flags="PA", options=TCP_OPTIONS[1])
    payload = random.Random(v6).randbytes(437)
    return cut(kernels_mod.load("python"), bytes(ETH / l3 / tcp / Raw(payload)), 100)


def rebuilt(frame: bytes, change: Callable[[Packet], None]) -> bytes:
    """``frame`` with ``change`` applied to its scapy parse and lengths and checksums redone."""
    pkt = Ether(frame)
    change(pkt)
    return redo(pkt)


def edit(i: int, change: Callable[[Packet], None]) -> Callable[[Frames], Frames]:
    def apply(frames: Frames) -> Frames:
        frames[i] = rebuilt(frames[i], change)
        return frames

    return apply


def every(change: Callable[[Packet], None]) -> Callable[[Frames], Frames]:
    def apply(frames: Frames) -> Frames:
        return [rebuilt(f, change) for f in frames]

    return apply


def flip(i: int, off: int, mask: int) -> Callable[[Frames], Frames]:
    """XOR byte ``off`` of frame i with ``mask``: checksums not redone."""

    def apply(frames: Frames) -> Frames:
        f = bytearray(frames[i])
        f[off] ^= mask
        frames[i] = bytes(f)
        return frames

    return apply


def setattr_(layer: type[Packet], **fields: Any) -> Callable[[Packet], None]:
    def change(pkt: Packet) -> None:
        for name, value in fields.items():
            setattr(pkt[layer], name, value)

    return change


def tagged(frames: Frames) -> Frames:
    return [f[:12] + b"\x81\x00\x00\x05" + f[12:] for f in frames]


def as_udp(frames: Frames) -> Frames:
    out = []
    for f in frames:
        pkt = Ether(f)
        data = bytes(pkt[TCP].payload)
        udp = UDP(sport=40000, dport=5201) / Raw(b"\0" * 20 + data)  # the TCP segment's size
        out.append(bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / udp))
    return out


def longer_last(frames: Frames) -> Frames:
    frames[-1] = rebuilt(frames[-1], lambda p: p[Raw].setfieldval("load", b"L" * 101))
    return frames


def empty_tail(frames: Frames) -> Frames:
    """The full segments, then a pure ACK (no payload) that continues the sequence."""
    full = frames[:-1]
    last = Ether(full[-1])
    seq = (last[TCP].seq + len(last[Raw].load)) % 2**32

    def no_payload(pkt: Packet) -> None:
        pkt[TCP].seq = seq
        pkt[TCP].remove_payload()

    return [*full, rebuilt(full[-1], no_payload)]


def short_tot_len(frames: Frames) -> Frames:
    pkt = Ether(frames[1])
    pkt[IP].len -= 1
    del pkt[IP].chksum
    frames[1] = bytes(pkt)
    return frames


def proto_udp(frames: Frames) -> Frames:
    """IP protocol 17 with the IP checksum redone; the TCP checksums stay valid for TCP."""
    out = []
    for f in frames:
        pkt = Ether(f)
        pkt[IP].proto = 17
        del pkt[IP].chksum
        out.append(bytes(pkt))
    return out


def swap_addresses(layer: type[Packet]) -> Callable[[Packet], None]:
    """src and dst swapped: the pseudo-header and IPv4 header sums, so the checksums, do not
    change; only the comparison with the first segment's header can tell."""

    def change(pkt: Packet) -> None:
        pkt[layer].src, pkt[layer].dst = pkt[layer].dst, pkt[layer].src

    return change


def padded_last(frames: Frames) -> Frames:
    frames[-1] += b"\0\0"
    return frames


def single(frames: Frames) -> Frames:
    return frames[:1]


TIMESTAMP_1_2 = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]
NOT_LAST = 1
LAST = -1
TCP_OFF = 14 + 20 + 32  # TCP payload offset in the IPv4 base frames

CASES: list[tuple[str, Callable[[Frames], Frames], bool]] = [
    ("one-datagram", single, False),
    ("seq-gap", edit(2, lambda p: setattr(p[TCP], "seq", p[TCP].seq + 1)), False),
    ("seq-gap-last", edit(LAST, lambda p: setattr(p[TCP], "seq", p[TCP].seq - 1)), False),
    ("other-sport", edit(NOT_LAST, setattr_(TCP, sport=40001)), False),
    ("other-dport", edit(LAST, setattr_(TCP, dport=80)), False),
    ("other-ack", edit(2, lambda p: setattr(p[TCP], "ack", p[TCP].ack + 1)), False),
    ("other-window", edit(2, setattr_(TCP, window=1)), False),
    ("other-timestamp", edit(2, setattr_(TCP, options=TIMESTAMP_1_2)), False),
    ("bad-tcp-checksum", flip(2, TCP_OFF + 5, 0x01), False),
    ("bad-tcp-checksum-first", flip(0, TCP_OFF, 0x80), False),
    ("bad-ipv4-checksum", flip(NOT_LAST, 24, 0x10), False),
    ("syn", edit(0, setattr_(TCP, flags="SA")), False),
    ("fin-last", edit(LAST, setattr_(TCP, flags="FA")), False),
    ("rst", edit(NOT_LAST, setattr_(TCP, flags="RA")), False),
    ("urg", edit(NOT_LAST, setattr_(TCP, flags="UA")), False),
    ("ece", edit(0, setattr_(TCP, flags="EA")), False),
    ("cwr-last", edit(LAST, setattr_(TCP, flags="CA")), False),
    ("no-ack", edit(NOT_LAST, setattr_(TCP, flags="")), False),
    ("psh-not-last", edit(NOT_LAST, setattr_(TCP, flags="PA")), False),
    ("other-ip-ttl", edit(2, setattr_(IP, ttl=1)), False),
    ("other-ip-dst", edit(LAST, setattr_(IP, dst="10.0.0.3")), False),
    ("ipv4-src-dst-swapped", edit(2, swap_addresses(IP)), False),
    ("vlan-tagged", tagged, False),
    ("udp", as_udp, False),
    ("ipv4-proto-udp", proto_udp, False),
    ("ipv4-more-fragments", every(setattr_(IP, flags="MF")), False),
    ("ipv4-fragment-offset", every(setattr_(IP, frag=8)), False),
    ("last-longer-than-mss", longer_last, False),
    ("zero-payload-segment", empty_tail, False),
    ("ipv4-tot-len-short", short_tot_len, False),
    ("ipv4-trailing-padding", padded_last, False),
    ("ipv6-other-flow-label", edit(NOT_LAST, setattr_(IPv6, fl=5)), True),
    ("ipv6-other-hop-limit", edit(2, setattr_(IPv6, hlim=1)), True),
    ("ipv6-src-dst-swapped", edit(LAST, swap_addresses(IPv6)), True),
    ("ipv6-payload-len-short", flip(2, 14 + 5, 0x01), True),
    ("ipv6-udp", every(lambda p: setattr(p[IPv6], "nh", 17)), True),
    ("ipv6-psh-not-last", edit(0, setattr_(TCP, flags="PA")), True),
]


def test_base_is_coalesced(kernels: Backend) -> None:
    """The buffers the cases change are accepted as they are (so each case tests its change)."""
    for v6 in (False, True):
        frames = base(v6)
        buf, seg = gro(frames)
        assert len(frames) == 5
        assert kernels.gro_coalesce(buf, len(buf), seg) == 8 + len(frames[0]) + 337


@pytest.mark.parametrize(("name", "mutate", "v6"), CASES, ids=[c[0] for c in CASES])
def test_refused(kernels: Backend, name: str, mutate: Callable[[Frames], Frames], v6: bool) -> None:
    buf, seg = gro(mutate(base(v6)))
    before = bytes(buf)
    assert kernels.gro_coalesce(buf, len(buf), seg) == 0, name
    assert bytes(buf) == before


def test_refused_other_vni(kernels: Backend) -> None:
    frames = base()
    buf, seg = gro(frames, [VNI, VNI, VNI ^ 1, VNI, VNI])
    before = bytes(buf)
    assert kernels.gro_coalesce(buf, len(buf), seg) == 0
    assert bytes(buf) == before


@pytest.mark.parametrize("delta", [-1, 1, 7], ids=["seg-short", "seg-long", "seg-longer"])
def test_refused_wrong_seg(kernels: Backend, delta: int) -> None:
    """A segment size that is not the datagrams' size cuts them in the wrong places."""
    buf, seg = gro(base())
    before = bytes(buf)
    assert kernels.gro_coalesce(buf, len(buf), seg + delta) == 0
    assert bytes(buf) == before


@pytest.mark.parametrize("seg", [0, 1, 61])
def test_refused_tiny_seg(kernels: Backend, seg: int) -> None:
    buf = bytearray(b"\x08" * 300)
    assert kernels.gro_coalesce(buf, len(buf), seg) == 0
    assert buf == b"\x08" * 300


@pytest.mark.parametrize(("length", "seg"), [(-1, 100), (501, 100), (100, -1), (100, 2**32)])
def test_rejects_bad_arguments(kernels: Backend, length: int, seg: int) -> None:
    with pytest.raises(ValueError):
        kernels.gro_coalesce(bytearray(500), length, seg)


# --- Both backends, random input --------------------------------------------------------------


@st.composite
def gro_inputs(draw: st.DrawFn) -> tuple[bytes, int]:
    """(buffer, seg): noise, or a valid receive with bytes overwritten, cut short or a seg off."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        data = draw(st.binary(max_size=400))
        return data, draw(st.integers(0, 200))
    buf, seg = gro(base(draw(st.booleans())))
    if kind == 1:
        for _ in range(draw(st.integers(1, 4))):
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    elif kind == 2:
        buf = buf[: draw(st.integers(0, len(buf)))]
    else:
        seg = draw(st.integers(0, len(buf) + 1))
    return bytes(buf), seg


@settings(deadline=None, max_examples=300)
@given(data=gro_inputs(), junk=st.binary(min_size=1, max_size=64))
def test_backends_agree_on_random_input(
    both: tuple[Backend, Backend], data: tuple[bytes, int], junk: bytes
) -> None:
    """Same result from C and Python; nothing past ``length`` read (different bytes there do
    not change it) or written; a refusal writes nothing; an acceptance is a valid segment."""
    buf, seg = data
    results = []
    for tail in (junk, bytes(b ^ 0xFF for b in junk)):
        for backend in both:
            work = bytearray(buf + tail)
            n = backend.gro_coalesce(work, len(buf), seg)
            assert bytes(work[len(buf) :]) == tail
            if n == 0:
                assert bytes(work[: len(buf)]) == buf
            else:
                assert 8 + 14 + 20 + 20 < n <= len(buf)
                assert oracle(bytes(work[8:n])) == bytes(work[8:n])
            results.append((n, bytes(work[: len(buf)])))
    assert results[0] == results[1] == results[2] == results[3]
