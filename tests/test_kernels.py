"""The batch kernels: the C backend and its Python twin agree byte for byte, and with wire.py.

Batches are filled with garbage first (buffer and metadata columns alike), so a kernel that
forgets to write a field, or writes one it should not, shows up as a difference.
"""

from __future__ import annotations

import os
import random
from array import array
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw

import vxlanpy
from vxlanpy import kernels as kernels_mod
from vxlanpy import wire
from vxlanpy.batch import DEFAULT_MAX_FRAME, FrameBatch
from vxlanpy.kernels import Backend
from vxlanpy.wire import STATUS_REASONS, VNI_MAX, MalformedPacket

SETTINGS = settings(deadline=None, max_examples=80)


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


REQUIRE_C = _truthy("CI") or _truthy("VXLANPY_REQUIRE_C")


@pytest.mark.skipif(not REQUIRE_C, reason="only in CI (CI=true) or with VXLANPY_REQUIRE_C=1")
def test_ci_runs_the_c_backend() -> None:
    """CI must prove the extension is built and chosen, not silently replaced by the twin."""
    assert kernels_mod.load("cffi").name == "cffi"
    if _truthy("VXLANPY_PURE_PYTHON"):
        pytest.skip("VXLANPY_PURE_PYTHON=1 chooses the twin on purpose")
    assert vxlanpy.BACKEND == "cffi"
    assert kernels_mod.backend.name == "cffi"


def test_load_by_name(kernels: Backend) -> None:
    assert kernels.name in ("cffi", "python")
    assert kernels_mod.load("python").name == "python"
    assert kernels_mod.BACKEND == kernels_mod.backend.name == vxlanpy.BACKEND


@pytest.fixture(scope="session")
def both() -> tuple[Backend, Backend]:
    """(C backend, Python backend); skipped where the extension is not built (unless required)."""
    try:
        c = kernels_mod.load("cffi")
    except ImportError:
        if REQUIRE_C:
            raise
        pytest.skip("C fast path not built")
    return c, kernels_mod.load("python")


# --- Strategies -------------------------------------------------------------------------------

ports = st.integers(0, 0xFFFF)


@st.composite
def ip_frames(draw: st.DrawFn) -> bytes:
    """scapy-built Ethernet/IP frames: IPv4/IPv6, TCP/UDP, sometimes tagged or fragmented."""
    eth: Packet = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    if draw(st.integers(0, 4)) == 0:
        eth = eth / Dot1Q(vlan=draw(st.integers(0, 4095)))
    l3: Packet
    if draw(st.booleans()):
        l3 = IPv6(src=str(draw(st.ip_addresses(v=6))), dst=str(draw(st.ip_addresses(v=6))))
    else:
        l3 = IP(
            src=str(draw(st.ip_addresses(v=4))),
            dst=str(draw(st.ip_addresses(v=4))),
            flags=draw(st.sampled_from(["", "DF", "MF"])),
            frag=draw(st.sampled_from([0, 0, 0, 185])),
        )
    l4 = draw(st.sampled_from([TCP, UDP]))(sport=draw(ports), dport=draw(ports))
    return bytes(eth / l3 / l4 / Raw(draw(st.binary(max_size=48))))


any_frames = st.one_of(
    ip_frames(), st.binary(max_size=13), st.binary(min_size=14, max_size=120), ip_frames()
)
any_vnis = st.one_of(st.integers(0, VNI_MAX), st.integers(0, 0xFFFFFFFF))


def batch_pair(data: st.DataObject) -> tuple[FrameBatch, FrameBatch]:
    """Two identical batches of random geometry, buffer and metadata full of garbage."""
    capacity = data.draw(st.integers(1, 6), label="capacity")
    max_frame = data.draw(st.integers(14, 160), label="max_frame")
    headroom = data.draw(st.integers(8, 72), label="headroom")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = random.Random(seed)
    pair = (FrameBatch(capacity, max_frame, headroom), FrameBatch(capacity, max_frame, headroom))
    junk = rng.randbytes(len(pair[0].buf))
    columns = {
        "frame_len": [rng.getrandbits(32) for _ in range(capacity)],
        "payload_len": [rng.getrandbits(32) for _ in range(capacity)],
        "vni": [rng.getrandbits(32) for _ in range(capacity)],
        "status": [rng.getrandbits(31) for _ in range(capacity)],
        "sport": [rng.getrandbits(16) for _ in range(capacity)],
    }
    for b in pair:
        b.buf[:] = junk
        for name, values in columns.items():
            getattr(b, name)[:] = array(getattr(b, name).typecode, values)
    return pair


def snapshot(b: FrameBatch) -> dict[str, Any]:
    return {
        "buf": bytes(b.buf),
        "count": b.count,
        "frame_len": b.frame_len.tolist(),
        "payload_len": b.payload_len.tolist(),
        "vni": b.vni.tolist(),
        "status": b.status.tolist(),
        "sport": b.sport.tolist(),
    }


# --- encap_batch ------------------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_encap_batch_backends_agree_and_match_wire(
    both: tuple[Backend, Backend], data: st.DataObject
) -> None:
    c, py = both
    bc, bp = batch_pair(data)
    room = bc.slot - bc.headroom  # what the kernels may read of a slot
    count = data.draw(st.integers(0, bc.capacity), label="count")
    lo = data.draw(ports, label="lo")
    hi = data.draw(st.integers(lo, 0xFFFF), label="hi")
    expected: list[tuple[bytes, int] | None] = []
    for i in range(count):
        vni = data.draw(any_vnis)
        if data.draw(st.integers(0, 5)) == 0:  # a corrupt length, beyond the slot
            flen = data.draw(st.integers(room + 1, 0xFFFFFFFF))
            frame = None
        else:
            frame = data.draw(any_frames)[:room]
            flen = len(frame)
        for b in (bc, bp):
            if frame is not None:
                off = b.frame_offset(i)
                b.buf[off : off + flen] = frame
            b.frame_len[i] = flen
            b.vni[i] = vni
        expected.append(None if frame is None else (frame, vni & VNI_MAX))
    bc.count = bp.count = count
    before = snapshot(bc)

    c.encap_batch(bc, lo, hi)
    py.encap_batch(bp, lo, hi)
    after = snapshot(bc)
    assert after == snapshot(bp)

    for i, item in enumerate(expected):
        if item is None:
            assert (bc.payload_len[i], bc.sport[i]) == (0, lo)
            hoff = bc.header_offset(i)
            assert after["buf"][hoff : hoff + 8] == before["buf"][hoff : hoff + 8]
            continue
        frame, vni = item
        assert bytes(bc.payload(i)) == wire.encapsulate(frame, vni)
        assert bc.sport[i] == wire.source_port(frame, lo, hi)
    for name in ("payload_len", "sport"):  # slots past count are not touched
        assert after[name][count:] == before[name][count:]
    untouched = {k: v for k, v in before.items() if k not in ("buf", "payload_len", "sport")}
    assert untouched == {k: after[k] for k in untouched}


# --- decap_batch ------------------------------------------------------------------------------


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """UDP payloads: valid VXLAN, VXLAN with stray bits, short ones and plain noise."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return wire.encapsulate(draw(any_frames), draw(st.integers(0, VNI_MAX)))
    if kind == 1:
        header = bytearray(wire.encode_header(draw(st.integers(0, VNI_MAX))))
        for pos in draw(st.lists(st.sampled_from([0, 1, 2, 3, 7]), max_size=2)):
            header[pos] |= 1 << draw(st.integers(0, 7))
        return bytes(header) + draw(any_frames)
    if kind == 2:
        return draw(st.binary(max_size=24))
    return draw(st.binary(max_size=120))


@SETTINGS
@given(data=st.data(), strict=st.booleans())
def test_decap_batch_backends_agree_and_match_wire(
    both: tuple[Backend, Backend], data: st.DataObject, strict: bool
) -> None:
    c, py = both
    bc, bp = batch_pair(data)
    room = bc.slot - bc.headroom + wire.VXLAN_HLEN
    count = data.draw(st.integers(0, bc.capacity), label="count")
    sent: list[bytes | None] = []
    for i in range(count):
        if data.draw(st.integers(0, 5)) == 0:
            payload = None
            plen = data.draw(st.integers(room + 1, 0xFFFFFFFF))
        else:
            payload = data.draw(payloads())[:room]
            plen = len(payload)
        for b in (bc, bp):
            if payload is not None:
                off = b.header_offset(i)
                b.buf[off : off + plen] = payload
            b.payload_len[i] = plen
        sent.append(payload)
    bc.count = bp.count = count
    before = snapshot(bc)

    c.decap_batch(bc, strict)
    py.decap_batch(bp, strict)
    after = snapshot(bc)
    assert after == snapshot(bp)
    assert after["buf"] == before["buf"]
    assert after["payload_len"] == before["payload_len"]
    assert after["sport"] == before["sport"]

    for i, payload in enumerate(sent):
        status = bc.status[i]
        if payload is None:  # corrupt length: unreadable, counted as too short
            assert (status, bc.vni[i], bc.frame_len[i]) == (1, 0, 0)
            continue
        try:
            vni, inner = wire.decapsulate(payload, strict)
        except MalformedPacket as exc:
            assert STATUS_REASONS.get(status) is exc.reason
            assert (bc.vni[i], bc.frame_len[i]) == (0, 0)
        else:
            assert (status, bc.vni[i]) == (0, vni)
            assert bytes(bc.frame(i)) == inner
    for name in ("vni", "status", "frame_len"):
        assert after[name][count:] == before[name][count:]


# --- flow_hash --------------------------------------------------------------------------------


@SETTINGS
@given(frame=any_frames)
def test_flow_hash_backends_agree(both: tuple[Backend, Backend], frame: bytes) -> None:
    c, py = both
    h = wire.flow_hash(frame)
    assert py.flow_hash(frame) == h
    assert c.flow_hash(frame) == h
    assert c.flow_hash(bytearray(frame)) == h
    assert c.flow_hash(memoryview(b"xx" + frame)[2:]) == h


# --- Contract details -------------------------------------------------------------------------


def test_views_are_reused_and_see_new_data(kernels: Backend) -> None:
    batch = FrameBatch(2, 64)
    first = bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="10.0.0.1", dst="10.0.0.2")
        / UDP(sport=1, dport=2)
    )
    batch.append_frame(first, 5)
    kernels.encap_batch(batch, 1000, 2000)
    assert bytes(batch.payload(0)) == wire.encapsulate(first, 5)
    views = dict(batch.views)
    second = bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="10.0.0.3", dst="10.0.0.4")
        / UDP(sport=3, dport=4)
    )
    batch.clear()
    batch.append_frame(second, 6)
    batch.append_frame(second[:10], 7)
    kernels.encap_batch(batch, 1000, 2000)
    assert batch.views == views  # no new cffi views: made once per batch
    assert bytes(batch.payload(0)) == wire.encapsulate(second, 6)
    assert batch.sport[0] == wire.source_port(second, 1000, 2000)
    assert bytes(batch.payload(1)) == wire.encapsulate(second[:10], 7)
    assert kernels.complete_checksums(batch) == 0


def test_full_default_batch(both: tuple[Backend, Backend]) -> None:
    """Default geometry, every slot holding a jumbo frame up to the last byte of the buffer."""
    c, py = both
    rng = random.Random(7)
    batches = (FrameBatch(), FrameBatch())
    for b in batches:
        rng.seed(7)
        while not b.full():
            b.append_frame(rng.randbytes(DEFAULT_MAX_FRAME), rng.getrandbits(24))
        b.frame_len[b.count - 1] = b.slot - b.headroom  # the last slot reaches the buffer's end
    c.encap_batch(batches[0], 49152, 65535)
    py.encap_batch(batches[1], 49152, 65535)
    assert snapshot(batches[0]) == snapshot(batches[1])
    for b in batches:
        b.payload_len[:] = array("I", [b.slot - b.headroom + 8] * b.capacity)
    c.decap_batch(batches[0], False)
    py.decap_batch(batches[1], False)
    assert snapshot(batches[0]) == snapshot(batches[1])
    assert c.complete_checksums(batches[0]) == py.complete_checksums(batches[1])
    assert snapshot(batches[0]) == snapshot(batches[1])


def test_empty_batch(kernels: Backend) -> None:
    batch = FrameBatch(3, 20)
    before = snapshot(batch)
    kernels.encap_batch(batch, 1, 2)
    kernels.decap_batch(batch, True)
    assert kernels.complete_checksums(batch) == 0
    assert snapshot(batch) == before


@pytest.mark.parametrize(("lo", "hi"), [(2, 1), (-1, 5), (0, 0x10000), (70000, 70001)])
def test_encap_batch_rejects_bad_port_range(kernels: Backend, lo: int, hi: int) -> None:
    batch = FrameBatch(1, 20)
    batch.append_frame(bytes(14))
    with pytest.raises(ValueError):
        kernels.encap_batch(batch, lo, hi)


def test_port_range_edges(kernels: Backend) -> None:
    batch = FrameBatch(4, 20)
    for n in range(4):
        batch.append_frame(bytes([n]) * 14)
    kernels.encap_batch(batch, 0, 0xFFFF)
    assert list(batch.sport) == [wire.source_port(bytes([n]) * 14, 0, 0xFFFF) for n in range(4)]
    kernels.encap_batch(batch, 4789, 4789)
    assert list(batch.sport) == [4789] * 4


@pytest.mark.parametrize("count", [-1, 3])
def test_batch_kernels_reject_bad_count(kernels: Backend, count: int) -> None:
    batch = FrameBatch(2, 20)
    batch.count = count  # C would write past the metadata columns
    with pytest.raises(ValueError):
        kernels.encap_batch(batch, 1, 2)
    with pytest.raises(ValueError):
        kernels.decap_batch(batch, False)
    with pytest.raises(ValueError):
        kernels.complete_checksums(batch)
