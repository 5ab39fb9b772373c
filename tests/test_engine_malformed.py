"""Malformed input never escapes the engine: each bad packet is dropped, counted and reported.

Drops before a VNI is known (bad header, short inner frame, unknown VNI) are counted on
``engine.counters``; later ones on the segment's counters. Every drop emits one ``Dropped``
event. Random bytes (hypothesis) must never raise out of ``handle_datagram(s)`` or
``handle_frame``, on either backend; the outcome is checked against an oracle built on
:func:`vxlanpy.wire.decapsulate`.
"""

from __future__ import annotations

from collections import Counter as Tally
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether

from vxlanpy import wire
from vxlanpy.batch import FrameBatch
from vxlanpy.engine import Engine, SegmentConfig
from vxlanpy.events import Dropped, Event
from vxlanpy.wire import DropReason, MalformedPacket, encode_header

BACKENDS = ["cffi", "python"]
backends = pytest.mark.parametrize("backend", BACKENDS)

VNI = 5000
SRC = "198.18.0.2"
LOCAL_MAC = bytes.fromhex("02aa00000001")
HOST = bytes.fromhex("02000000000b")

FRAME = raw(
    Ether(dst="02:aa:00:00:00:01", src="02:00:00:00:00:0b")
    / IP(src="198.19.0.2", dst="198.19.0.1")
    / ICMP()
)

fuzz = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


def make_engine(backend: str, *, strict: bool = False, **seg_kw: Any) -> Engine:
    engine = Engine(backend=backend, strict=strict)
    seg_kw.setdefault("remotes", ("198.18.0.9",))
    engine.add_segment(SegmentConfig(VNI, local_mac=LOCAL_MAC, **seg_kw))
    return engine


def header(flags: int = 0x08, vni: int = VNI, r1: bytes = b"\0\0\0", r2: int = 0) -> bytes:
    return bytes([flags]) + r1 + vni.to_bytes(3, "big") + bytes([r2])


def events(engine: Engine) -> list[Event]:
    return list(engine.events())


def receive_one(engine: Engine, payload: bytes, batched: bool) -> list[bytes]:
    """Feed one payload through the single or the batch API; return the device frames."""
    if batched:
        batch = FrameBatch(2)
        batch.append_payload(payload)
        engine.handle_datagrams(batch, [SRC], 1.0)
    else:
        engine.handle_datagram(payload, SRC, 1.0)
    return [bytes(f.frame) for f in engine.frames_to_device()]


# --- each malformation, its reason and where it is counted ------------------------------------

HEADER_CASES = [
    pytest.param(b"", DropReason.TOO_SHORT, id="empty"),
    pytest.param(b"\x08", DropReason.TOO_SHORT, id="1-byte"),
    pytest.param(header()[:7], DropReason.TOO_SHORT, id="7-bytes"),
    pytest.param(header(flags=0x00) + FRAME, DropReason.NO_I_FLAG, id="i-flag-clear"),
    pytest.param(header(flags=0xF7) + FRAME, DropReason.NO_I_FLAG, id="all-but-i-flag"),
    pytest.param(header(), DropReason.INNER_TOO_SHORT, id="header-only"),
    pytest.param(header() + FRAME[:13], DropReason.INNER_TOO_SHORT, id="inner-13-bytes"),
    pytest.param(header(vni=VNI + 1) + FRAME, DropReason.UNKNOWN_VNI, id="unknown-vni"),
]


@backends
@pytest.mark.parametrize("batched", [False, True], ids=["single", "batch"])
@pytest.mark.parametrize(("payload", "reason"), HEADER_CASES)
def test_dropped_before_a_vni_is_known(
    backend: str, batched: bool, payload: bytes, reason: DropReason
) -> None:
    engine = make_engine(backend)
    assert receive_one(engine, payload, batched) == []
    assert events(engine) == [Dropped(reason, None, SRC)]
    assert engine.counters.drops == Tally({reason: 1})
    seg = engine.segment(VNI).counters
    assert seg.dropped == 0 and seg.rx_packets == 0 and seg.learned == 0


RESERVED = [
    pytest.param(header(flags=0x0C), id="flags-0x0c"),
    pytest.param(header(flags=0x88), id="flags-0x88"),
    pytest.param(header(r1=b"\0\x01\0"), id="reserved-24"),
    pytest.param(header(r2=0x01), id="reserved-8"),
    pytest.param(header(flags=0xFF, r1=b"\xff\xff\xff", r2=0xFF), id="all-set"),
]


@backends
@pytest.mark.parametrize("batched", [False, True], ids=["single", "batch"])
@pytest.mark.parametrize("hdr", RESERVED)
def test_reserved_bits(backend: str, batched: bool, hdr: bytes) -> None:
    strict = make_engine(backend, strict=True)
    assert receive_one(strict, hdr + FRAME, batched) == []
    assert events(strict) == [Dropped(DropReason.RESERVED_BITS, None, SRC)]
    assert strict.counters.drops == Tally({DropReason.RESERVED_BITS: 1})

    lenient = make_engine(backend)  # RFC 7348: reserved bits are ignored on receipt
    assert receive_one(lenient, hdr + FRAME, batched) == [FRAME]
    assert lenient.counters.dropped == 0
    assert lenient.segment(VNI).counters.rx_packets == 1


SOURCE_CASES = [
    pytest.param(b"\x01\x00\x5e\x00\x00\x01", DropReason.BAD_SOURCE_MAC, id="multicast"),
    pytest.param(b"\xff" * 6, DropReason.BAD_SOURCE_MAC, id="broadcast"),
    pytest.param(b"\x00" * 6, DropReason.BAD_SOURCE_MAC, id="zero"),
    pytest.param(LOCAL_MAC, DropReason.LOOPED, id="own-mac"),
]


@backends
@pytest.mark.parametrize("batched", [False, True], ids=["single", "batch"])
@pytest.mark.parametrize(("smac", "reason"), SOURCE_CASES)
def test_bad_inner_source_mac(backend: str, batched: bool, smac: bytes, reason: DropReason) -> None:
    engine = make_engine(backend)
    inner = FRAME[:6] + smac + FRAME[12:]
    assert receive_one(engine, header() + inner, batched) == []
    assert events(engine) == [Dropped(reason, VNI, SRC)]
    seg = engine.segment(VNI)
    assert seg.counters.drops == Tally({reason: 1})
    assert engine.counters.dropped == 0
    assert seg.fdb.learned_count == 0  # nothing learned from a dropped frame


@backends
def test_minimal_inner_frame_is_delivered(backend: str) -> None:
    engine = make_engine(backend)
    inner = FRAME[:14]  # exactly an Ethernet header
    assert receive_one(engine, header() + inner, True) == [inner]
    assert engine.segment(VNI).counters.rx_bytes == 14


# --- random bytes: never raise, always accounted for ------------------------------------------


def oracle(payload: bytes, strict: bool) -> tuple[DropReason | None, int | None]:
    """(drop reason or None if delivered, the VNI a drop is attributed to)."""
    try:
        vni, inner = wire.decapsulate(payload, strict)
    except MalformedPacket as exc:
        return exc.reason, None
    if vni != VNI:
        return DropReason.UNKNOWN_VNI, None
    smac = inner[6:12]
    if smac[0] & 1 or smac == wire.ZERO_MAC:
        return DropReason.BAD_SOURCE_MAC, VNI
    if smac == LOCAL_MAC:
        return DropReason.LOOPED, VNI
    if (inner[12] << 8 | inner[13]) in (wire.ETH_P_8021Q, wire.ETH_P_8021AD):
        return DropReason.VLAN_TAGGED, VNI
    return None, VNI


# mostly-plausible payloads: a header with random flags/reserved bits, a VNI that is usually ours
plausible = st.builds(
    lambda flags, r1, vni, r2, inner: (
        bytes([flags]) + r1 + vni.to_bytes(3, "big") + bytes([r2]) + inner
    ),
    st.sampled_from([0x08, 0x08, 0x08, 0x00, 0x0C, 0xFF]) | st.integers(0, 255),
    st.sampled_from([b"\0\0\0"]) | st.binary(min_size=3, max_size=3),
    st.sampled_from([VNI, VNI, VNI + 1]) | st.integers(0, wire.VNI_MAX),
    st.sampled_from([0]) | st.integers(0, 255),
    st.binary(max_size=80)
    | st.builds(
        lambda smac, rest: FRAME[:6] + smac + rest,
        st.binary(min_size=6, max_size=6),
        st.binary(max_size=40),
    ),
)
payloads = st.binary(max_size=100) | plausible


@backends
@fuzz
@given(payload=payloads, strict=st.booleans())
def test_random_datagram_never_raises(backend: str, payload: bytes, strict: bool) -> None:
    engine = make_engine(backend, strict=strict)
    frames = receive_one(engine, payload, batched=False)
    reason, vni = oracle(payload, strict)
    evs = events(engine)
    seg = engine.segment(VNI).counters
    if reason is None:
        assert frames == [payload[8:]]
        assert seg.rx_packets == 1 and seg.dropped == engine.counters.dropped == 0
        assert all(not isinstance(e, Dropped) for e in evs)
    else:
        assert frames == []
        assert evs == [Dropped(reason, vni, SRC)]
        where = engine.counters if vni is None else seg
        assert where.drops == Tally({reason: 1})
        assert engine.counters.dropped + seg.dropped == 1


@backends
@fuzz
@given(batch_payloads=st.lists(payloads, min_size=1, max_size=24), strict=st.booleans())
def test_random_datagram_batches_never_raise(
    backend: str, batch_payloads: list[bytes], strict: bool
) -> None:
    engine = make_engine(backend, strict=strict)
    batch = FrameBatch(24, max_frame=256)
    for p in batch_payloads:
        batch.append_payload(p)
    engine.handle_datagrams(batch, [SRC] * batch.count, 2.0)
    got = [bytes(f.frame) for f in engine.frames_to_device()]

    outcomes = [oracle(p, strict) for p in batch_payloads]
    assert got == [p[8:] for p, (r, _) in zip(batch_payloads, outcomes, strict=True) if r is None]
    expected_engine = Tally(r for r, v in outcomes if r is not None and v is None)
    expected_seg = Tally(r for r, v in outcomes if r is not None and v is not None)
    seg = engine.segment(VNI).counters
    assert engine.counters.drops == expected_engine
    assert seg.drops == expected_seg
    assert seg.rx_packets == len(got)
    dropped_events = [e for e in events(engine) if isinstance(e, Dropped)]
    assert [(e.reason, e.vni) for e in dropped_events] == [o for o in outcomes if o[0] is not None]


@backends
@fuzz
@given(
    frame=st.binary(max_size=120)
    | st.builds(
        lambda et, body: FRAME[:12] + et + body,
        st.sampled_from([b"\x08\x06", b"\x81\x00", b"\x88\xa8", b"\x08\x00"]),
        st.binary(max_size=60),
    ),
    proxy=st.booleans(),
    allow_vlan=st.booleans(),
)
def test_random_device_frames_never_raise(
    backend: str, frame: bytes, proxy: bool, allow_vlan: bool
) -> None:
    engine = make_engine(
        backend, proxy=proxy, allow_vlan=allow_vlan, neigh=[("198.19.0.1", LOCAL_MAC)]
    )
    engine.handle_frame(VNI, frame, 3.0)
    sent = engine.datagrams_to_send()
    to_device = engine.frames_to_device()
    seg = engine.segment(VNI).counters
    # exactly one outcome: sent on, answered by the proxy, or dropped (and counted)
    outcomes = [bool(sent), bool(to_device), seg.dropped == 1]
    assert outcomes.count(True) == 1, (outcomes, frame.hex())
    assert seg.dropped <= 1 and engine.counters.dropped == 0
    for d in sent:
        assert bytes(d.payload) == encode_header(VNI) + frame


@backends
@fuzz
@given(frames=st.lists(st.binary(max_size=100), min_size=1, max_size=16))
def test_random_device_batches_never_raise(backend: str, frames: list[bytes]) -> None:
    engine = make_engine(backend, proxy=True, neigh=[("198.19.0.1", LOCAL_MAC)])
    batch = FrameBatch(16, max_frame=128)
    for f in frames:
        batch.append_frame(f)
    engine.handle_frames(VNI, batch, 3.0)
    sent = engine.datagrams_to_send()
    seg = engine.segment(VNI).counters
    assert seg.tx_packets == len(sent)
    assert {bytes(d.payload)[8:] for d in sent} <= set(frames)
