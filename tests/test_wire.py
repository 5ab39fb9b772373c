"""Wire codecs: VXLAN header, encapsulation, MAC and ARP helpers, the inner-flow hash.

scapy is the independent oracle (always ``VXLAN(flags=0x08, ...)``: without the flag scapy builds
a VXLAN-GPE header). Tests that take the ``kernels`` fixture also push the same packets through
the batch kernels of both backends.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

import vxlanpy
from vxlanpy import wire
from vxlanpy.batch import FrameBatch
from vxlanpy.kernels import Backend
from vxlanpy.wire import STATUS_REASONS, VNI_MAX, DropReason, MalformedPacket

SCAPY = settings(deadline=None, max_examples=60)  # building packets with scapy is slowish

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"

vnis = st.integers(0, VNI_MAX)
frames = st.binary(min_size=14, max_size=200)
ports = st.integers(0, 0xFFFF)


@st.composite
def ip_packets(draw: st.DrawFn, vlan: bool = False) -> Packet:
    """An Ethernet/IPv4-or-IPv6/TCP-or-UDP packet, correct checksums, optional 802.1Q tag."""
    eth = Ether(src=MAC_A, dst=MAC_B)
    if vlan and draw(st.booleans()):
        eth = eth / Dot1Q(vlan=draw(st.integers(0, 4095)))
    if draw(st.booleans()):
        l3: Packet = IPv6(
            src=str(draw(st.ip_addresses(v=6))),
            dst=str(draw(st.ip_addresses(v=6))),
            hlim=draw(st.integers(1, 255)),
        )
    else:
        l3 = IP(
            src=str(draw(st.ip_addresses(v=4))),
            dst=str(draw(st.ip_addresses(v=4))),
            ttl=draw(st.integers(1, 255)),
            id=draw(ports),
        )
    l4cls = draw(st.sampled_from([TCP, UDP]))
    l4 = l4cls(sport=draw(ports), dport=draw(ports))
    return eth / l3 / l4 / Raw(draw(st.binary(max_size=64)))


def one_frame_batch(kernels: Backend, payload: bytes, strict: bool) -> tuple[int, int, bytes]:
    """``decap_batch`` on a one-slot batch: ``(status, vni, inner frame)``."""
    batch = FrameBatch(1, max(len(payload), 14))
    batch.append_payload(payload)
    kernels.decap_batch(batch, strict)
    return batch.status[0], batch.vni[0], bytes(batch.frame(0))


def encap_one(kernels: Backend, frame: bytes, vni: int, lo: int = 0, hi: int = 0xFFFF) -> Any:
    batch = FrameBatch(1, max(len(frame), 14))
    batch.append_frame(frame, vni)
    kernels.encap_batch(batch, lo, hi)
    return bytes(batch.payload(0)), batch.sport[0]


# --- VXLAN header -----------------------------------------------------------------------------


def test_encode_header_layout() -> None:
    assert wire.encode_header(0x123456) == bytes.fromhex("08000000 12345600")
    assert wire.encode_header(0) == bytes.fromhex("08000000 00000000")
    assert wire.encode_header(VNI_MAX) == bytes.fromhex("08000000 ffffff00")


@given(vni=vnis, strict=st.booleans())
def test_header_round_trip(vni: int, strict: bool) -> None:
    assert wire.decode_header(wire.encode_header(vni), strict) == vni


@pytest.mark.parametrize("vni", [0, 1, 42, VNI_MAX])
def test_check_vni_accepts_24_bits(vni: int) -> None:
    assert wire.check_vni(vni) == vni


@pytest.mark.parametrize("vni", [-1, VNI_MAX + 1, 1 << 32, True, False, 1.0, "1", None])
def test_check_vni_rejects(vni: Any) -> None:
    with pytest.raises(ValueError):
        wire.check_vni(vni)
    with pytest.raises(ValueError):
        wire.encode_header(vni)
    with pytest.raises(ValueError):
        wire.encapsulate(bytes(14), vni)


def test_known_vector_scapy() -> None:
    """The vector from STYLE.md: UDP/VXLAN(vni=42) with the I flag, as scapy builds it."""
    expected = bytes.fromhex("04 00 12 b5 00 10 00 00 08 00 00 00 00 00 2a 00")
    built = bytes(UDP(sport=1024, dport=4789) / VXLAN(flags=0x08, vni=42))
    assert built == expected
    assert built[8:] == wire.encode_header(42)
    assert wire.decode_header(built[8:], strict=True) == 42


# --- Encapsulation ----------------------------------------------------------------------------


@given(frame=frames, vni=vnis, strict=st.booleans())
def test_encap_decap_round_trip(frame: bytes, vni: int, strict: bool) -> None:
    payload = vxlanpy.encapsulate(frame, vni)
    assert payload == wire.encode_header(vni) + frame
    assert vxlanpy.decapsulate(payload, strict) == (vni, frame)
    assert vxlanpy.decapsulate(bytearray(payload), strict) == (vni, frame)
    assert vxlanpy.decapsulate(memoryview(payload), strict) == (vni, frame)


def test_encapsulate_does_not_inspect_the_frame() -> None:
    assert wire.encapsulate(b"", 7) == wire.encode_header(7)
    assert wire.encapsulate(memoryview(b"abc"), 7) == wire.encode_header(7) + b"abc"


@SCAPY
@given(frame=st.binary(max_size=200), vni=vnis)
def test_encapsulate_matches_scapy(kernels: Backend, frame: bytes, vni: int) -> None:
    oracle = bytes(VXLAN(flags=0x08, vni=vni) / Raw(frame))
    assert vxlanpy.encapsulate(frame, vni) == oracle
    assert encap_one(kernels, frame, vni)[0] == oracle


@SCAPY
@given(pkt=ip_packets(vlan=True), vni=vnis, sport=ports)
def test_decapsulate_scapy_built(kernels: Backend, pkt: Packet, vni: int, sport: int) -> None:
    datagram = bytes(UDP(sport=sport, dport=4789) / VXLAN(flags=0x08, vni=vni) / pkt)
    payload = datagram[8:]
    assert vxlanpy.decapsulate(payload, strict=True) == (vni, bytes(pkt))
    assert one_frame_batch(kernels, payload, True) == (0, vni, bytes(pkt))


# --- Malformed packets ------------------------------------------------------------------------

INNER = bytes(Ether(src=MAC_A, dst=MAC_B, type=0x0800))
HDR = wire.encode_header(42)

# (payload, reason by default or None if accepted, reason in strict mode or None)
MALFORMED = [
    pytest.param(b"", DropReason.TOO_SHORT, DropReason.TOO_SHORT, id="empty"),
    pytest.param(HDR[:1], DropReason.TOO_SHORT, DropReason.TOO_SHORT, id="1-byte"),
    pytest.param(HDR[:7], DropReason.TOO_SHORT, DropReason.TOO_SHORT, id="7-bytes"),
    pytest.param(bytes(8) + INNER, DropReason.NO_I_FLAG, DropReason.NO_I_FLAG, id="no-flags"),
    pytest.param(
        b"\xf7" + HDR[1:] + INNER, DropReason.NO_I_FLAG, DropReason.NO_I_FLAG, id="all-but-I"
    ),
    pytest.param(b"\x0c" + HDR[1:] + INNER, None, DropReason.RESERVED_BITS, id="gpe-P-flag"),
    pytest.param(b"\x88" + HDR[1:] + INNER, None, DropReason.RESERVED_BITS, id="flag-bit-7"),
    pytest.param(HDR[:1] + b"\x01" + HDR[2:] + INNER, None, DropReason.RESERVED_BITS, id="rsv1"),
    pytest.param(HDR[:3] + b"\x80" + HDR[4:] + INNER, None, DropReason.RESERVED_BITS, id="rsv3"),
    pytest.param(HDR[:7] + b"\x01" + INNER, None, DropReason.RESERVED_BITS, id="rsv-last"),
    pytest.param(HDR, DropReason.INNER_TOO_SHORT, DropReason.INNER_TOO_SHORT, id="no-inner"),
    pytest.param(
        HDR + INNER[:13], DropReason.INNER_TOO_SHORT, DropReason.INNER_TOO_SHORT, id="inner-13"
    ),
    pytest.param(HDR + INNER, None, None, id="inner-14"),
    pytest.param(
        b"\x0c" + HDR[1:] + INNER[:5],
        DropReason.INNER_TOO_SHORT,
        DropReason.RESERVED_BITS,
        id="reserved-before-length",
    ),
]


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
@pytest.mark.parametrize(("payload", "default", "in_strict"), MALFORMED)
def test_malformed_reasons(
    kernels: Backend,
    payload: bytes,
    default: DropReason | None,
    in_strict: DropReason | None,
    strict: bool,
) -> None:
    expected = in_strict if strict else default
    status, vni, inner = one_frame_batch(kernels, payload, strict)
    if expected is None:
        assert wire.decapsulate(payload, strict) == (42, INNER)
        assert (status, vni, inner) == (0, 42, INNER)
        return
    with pytest.raises(MalformedPacket) as info:
        wire.decapsulate(payload, strict)
    assert info.value.reason is expected
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(expected.value)
    assert STATUS_REASONS[status] is expected
    assert (vni, inner) == (0, b"")


@SCAPY
@given(
    flags=st.one_of(st.just(0), st.integers(0, 255)),
    rsv1=st.one_of(st.just(0), st.integers(0, (1 << 24) - 1)),
    rsv2=st.integers(0, 255),
    vni=vnis,
)
def test_reserved_bits_ignored_unless_strict(
    kernels: Backend, flags: int, rsv1: int, rsv2: int, vni: int
) -> None:
    header = struct.pack("!BBHI", flags | 0x08, rsv1 >> 16, rsv1 & 0xFFFF, vni << 8 | rsv2)
    if flags | 0x08 == 0x08:  # other flags switch scapy to the GPE or GBP layouts
        oracle = VXLAN(flags=flags | 0x08, reserved1=rsv1, vni=vni, reserved2=rsv2)
        assert bytes(oracle) == header
    payload = header + INNER
    assert wire.decapsulate(payload) == (vni, INNER)
    assert one_frame_batch(kernels, payload, False) == (0, vni, INNER)
    if flags & ~0x08 or rsv1 or rsv2:
        with pytest.raises(MalformedPacket) as info:
            wire.decapsulate(payload, strict=True)
        assert info.value.reason is DropReason.RESERVED_BITS
        assert one_frame_batch(kernels, payload, True)[0] == 3
    else:
        assert wire.decapsulate(payload, strict=True) == (vni, INNER)


@given(payload=st.binary(max_size=40), strict=st.booleans())
def test_random_bytes_raise_only_malformed(payload: bytes, strict: bool) -> None:
    try:
        vni, inner = wire.decapsulate(payload, strict)
    except MalformedPacket as exc:
        assert exc.reason in STATUS_REASONS.values()
    else:
        assert 0 <= vni <= VNI_MAX and inner == payload[8:] and len(inner) >= 14
    try:
        wire.decode_header(payload, strict)
    except MalformedPacket:
        pass


# --- MAC addresses ----------------------------------------------------------------------------


@given(mac=st.binary(min_size=6, max_size=6))
def test_mac_round_trip(mac: bytes) -> None:
    text = wire.format_mac(mac)
    assert len(text) == 17 and text == text.lower()
    assert wire.parse_mac(text) == mac
    assert wire.parse_mac(text.upper().replace(":", "-")) == mac
    assert wire.is_multicast_mac(mac) == bool(mac[0] & 1)


def test_parse_mac_forms() -> None:
    assert wire.parse_mac("0:1:a:B:c:d") == bytes([0, 1, 10, 11, 12, 13])
    assert wire.parse_mac(" ff:ff:ff:ff:ff:ff\n") == wire.BROADCAST_MAC
    assert wire.format_mac(wire.ZERO_MAC) == "00:00:00:00:00:00"
    assert wire.is_multicast_mac(wire.BROADCAST_MAC)
    assert not wire.is_multicast_mac(wire.parse_mac(MAC_A))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "aa:bb:cc:dd:ee",
        "aa:bb:cc:dd:ee:ff:00",
        "aaa:bb:cc:dd:ee:ff",
        "aa::cc:dd:ee:ff",
        "gg:bb:cc:dd:ee:ff",
        "aa.bb.cc.dd.ee.ff",
        "+a:bb:cc:dd:ee:ff",
        "aa:bb:cc:dd:ee: f",
        "a_:bb:cc:dd:ee:ff",
        "\u0661:2:3:4:5:6",  # ARABIC-INDIC DIGIT ONE: int() takes it, a MAC must not
    ],
)
def test_parse_mac_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        wire.parse_mac(text)


# --- ARP --------------------------------------------------------------------------------------

ipv4s = st.ip_addresses(v=4)
macs = st.binary(min_size=6, max_size=6)


@SCAPY
@given(
    op=st.sampled_from([wire.ARP_REQUEST, wire.ARP_REPLY]),
    sha=macs,
    tha=macs,
    spa=ipv4s,
    tpa=ipv4s,
    dst=macs,
    src=macs,
)
def test_arp_build_parse_round_trip(
    op: int,
    sha: bytes,
    tha: bytes,
    spa: ipaddress.IPv4Address,
    tpa: ipaddress.IPv4Address,
    dst: bytes,
    src: bytes,
) -> None:
    arp = wire.ArpPacket(op, sha, spa.packed, tha, tpa.packed)
    frame = wire.build_arp_frame(dst, src, arp)
    assert len(frame) == 60
    assert frame[:14] == dst + src + b"\x08\x06"
    assert wire.parse_arp(frame[14:]) == arp
    assert (arp.sender_ip, arp.target_ip) == (spa, tpa)
    oracle = Ether(dst=wire.format_mac(dst), src=wire.format_mac(src)) / ARP(
        op=op,
        hwsrc=wire.format_mac(sha),
        psrc=str(spa),
        hwdst=wire.format_mac(tha),
        pdst=str(tpa),
    )
    assert frame == bytes(oracle).ljust(60, b"\x00")
    assert wire.parse_arp(bytes(oracle)[14:]) == arp


def test_parse_arp_rejects_non_ethernet_ipv4() -> None:
    good = bytes(ARP(op=1, hwsrc=MAC_A, psrc="10.0.0.1", pdst="10.0.0.2"))
    assert wire.parse_arp(good) is not None
    assert wire.parse_arp(good[:27]) is None
    assert wire.parse_arp(b"") is None
    assert wire.parse_arp(b"\x00\x06" + good[2:]) is None  # hardware type IEEE 802
    assert wire.parse_arp(good[:2] + b"\x86\xdd" + good[4:]) is None  # protocol IPv6
    assert wire.parse_arp(good[:4] + b"\x08" + good[5:]) is None  # hardware length 8
    assert wire.parse_arp(good[:5] + b"\x10" + good[6:]) is None  # protocol length 16


# --- Inner-flow hash and source port ----------------------------------------------------------


def reference_key(pkt: Packet) -> bytes:
    """The flow key of the contract in wire.py, computed from scapy's fields (no wire code)."""
    pkt = Ether(bytes(pkt))  # dissect the built bytes: every field has its final value
    if IP in pkt:
        ip = pkt[IP]
        key = bytes([4, ip.proto]) + ipaddress.IPv4Address(ip.src).packed
        key += ipaddress.IPv4Address(ip.dst).packed
        if (TCP in pkt or UDP in pkt) and ip.frag == 0 and not ip.flags.MF:
            l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
            key += struct.pack("!HH", l4.sport, l4.dport)
        return key
    if IPv6 in pkt:
        ip6 = pkt[IPv6]
        key = bytes([6, ip6.nh]) + ipaddress.IPv6Address(ip6.src).packed
        key += ipaddress.IPv6Address(ip6.dst).packed
        if TCP in pkt or UDP in pkt:
            l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
            key += struct.pack("!HH", l4.sport, l4.dport)
        return key
    raw = bytes(pkt)
    return b"\x00" + raw[:12] + raw[12:14]


@SCAPY
@given(pkt=ip_packets(vlan=True))
def test_flow_hash_matches_reference_key(kernels: Backend, pkt: Packet) -> None:
    frame = bytes(pkt)
    expected = wire.fmix32(zlib.crc32(reference_key(pkt)))
    assert wire.flow_hash(frame) == expected
    assert vxlanpy.flow_hash(frame) == expected
    assert kernels.flow_hash(frame) == expected


def test_flow_hash_non_ip_and_short(kernels: Backend) -> None:
    arp = Ether(src=MAC_A, dst=MAC_B) / ARP(hwsrc=MAC_A, psrc="10.0.0.1", pdst="10.0.0.2")
    assert wire.flow_key(bytes(arp)) == reference_key(arp)
    assert wire.flow_key(b"abc") == b"\x00abc"
    for frame in (bytes(arp), b"", b"abc", bytes(13)):
        assert kernels.flow_hash(frame) == wire.flow_hash(frame)


def test_fmix32_and_port_from_hash() -> None:
    assert wire.fmix32(0) == 0
    assert wire.fmix32(1) == 0x514E28B7  # MurmurHash3 fmix32(1)
    assert wire.port_from_hash(0, 1000, 2000) == 1000
    assert wire.port_from_hash(0xFFFFFFFF, 1000, 2000) == 2000
    assert wire.port_from_hash(0xFFFFFFFF, 0, 0xFFFF) == 0xFFFF
    assert wire.port_from_hash(0x80000000, 0, 0xFFFF) == 0x8000
    assert wire.port_from_hash(12345, 7, 7) == 7


def _tcp4(sport: int = 1000, dport: int = 80, **ip: Any) -> Packet:
    return (
        Ether(src=MAC_A, dst=MAC_B)
        / IP(src="10.0.0.1", dst="10.0.0.2", **ip)
        / TCP(sport=sport, dport=dport)
    )


def test_same_flow_same_port(kernels: Backend) -> None:
    a = _tcp4(ttl=64, id=1) / Raw(b"first")
    b = Ether(src=MAC_B, dst=MAC_A) / IP(src="10.0.0.1", dst="10.0.0.2", ttl=3, id=99)
    b = b / TCP(sport=1000, dport=80, seq=12345, flags="A") / Raw(b"second segment, longer")
    assert wire.source_port(bytes(a)) == wire.source_port(bytes(b))
    assert encap_one(kernels, bytes(a), 1)[1] == encap_one(kernels, bytes(b), 2)[1]
    reply = _tcp4(sport=80, dport=1000)
    assert wire.flow_hash(bytes(reply)) != wire.flow_hash(bytes(a))  # direction matters


@given(frame=st.binary(max_size=120), lo=ports, span=ports)
def test_source_port_within_range(frame: bytes, lo: int, span: int) -> None:
    hi = min(lo + span, 0xFFFF)
    port = wire.source_port(frame, lo, hi)
    assert lo <= port <= hi
    assert 49152 <= wire.source_port(frame) <= 65535


@pytest.mark.parametrize("l3", ["ipv4", "ipv6"])
@pytest.mark.parametrize("l4", [TCP, UDP], ids=["tcp", "udp"])
def test_different_ports_spread(kernels: Backend, l3: str, l4: type[Packet]) -> None:
    if l3 == "ipv4":
        base = Ether(src=MAC_A, dst=MAC_B) / IP(src="192.0.2.1", dst="192.0.2.2")
    else:
        base = Ether(src=MAC_A, dst=MAC_B) / IPv6(src="2001:db8::1", dst="2001:db8::2")
    frames_ = [bytes(base / l4(sport=s, dport=4000)) for s in range(30000, 30200)]
    frames_ += [bytes(base / l4(sport=30000, dport=d)) for d in range(1, 201)]
    hashes = {kernels.flow_hash(f) for f in frames_}
    assert len(hashes) >= len(frames_) - 1  # 32-bit hash: a collision here is a bug
    sports = {wire.source_port(f) for f in frames_}
    assert len(sports) >= 0.9 * len(frames_)  # 400 values in 16384 ports


def test_fragments_ignore_ports(kernels: Backend) -> None:
    first = bytes(_tcp4(sport=1, dport=2, flags="MF", id=7) / Raw(b"x" * 16))
    other = bytes(_tcp4(sport=3, dport=4, flags="MF", id=7) / Raw(b"y" * 16))
    later = Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.1", dst="10.0.0.2", proto=6, frag=3)
    later = bytes(later / Raw(b"z" * 16))  # a later fragment: no TCP header, data only
    whole = bytes(_tcp4(sport=1, dport=2))
    h = kernels.flow_hash(first)
    assert kernels.flow_hash(other) == h
    assert kernels.flow_hash(later) == h
    assert kernels.flow_hash(whole) != h
    assert wire.flow_key(first) == b"\x04\x06" + bytes([10, 0, 0, 1, 10, 0, 0, 2])


@pytest.mark.parametrize(
    "inner",
    [
        IP(src="10.1.1.1", dst="10.2.2.2") / UDP(sport=5353, dport=53),
        IP(src="10.1.1.1", dst="10.2.2.2") / ICMP(),
        IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=40000, dport=443),
    ],
    ids=["ipv4-udp", "ipv4-icmp", "ipv6-tcp"],
)
def test_vlan_tags_are_skipped(kernels: Backend, inner: Packet) -> None:
    eth = Ether(src=MAC_A, dst=MAC_B)
    untagged = bytes(eth / inner)
    tagged = bytes(eth / Dot1Q(vlan=100) / inner)
    qinq = bytes(eth / Dot1AD(vlan=20) / Dot1Q(vlan=100) / inner)
    h = kernels.flow_hash(untagged)
    assert kernels.flow_hash(tagged) == h
    assert kernels.flow_hash(qinq) == h
    assert wire.source_port(tagged) == wire.source_port(untagged)
    # A truncated tag stack is hashed as a non-IP frame, by the tag ethertype
    assert kernels.flow_hash(tagged[:17]) == wire.fmix32(zlib.crc32(b"\x00" + tagged[:14]))
