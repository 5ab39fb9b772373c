"""The C forwarding cache (fast path) against the Python engine (slow path).

Two engines get the same random history: frames from the device, datagrams from three remote
VTEPs (learning and moves), admin ``fdb`` changes, and time passing (ageing). Engine ``fast``
forwards through the C mirror (hits in C, the rest as upcalls); engine ``slow`` is the plain
Python engine. After every step both must have produced the same datagrams, device frames and
events, and the mirror must hold exactly what the FDB holds (remote, static/learned), with a
last-seen time at least as recent as the FDB's.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vxlanpy import fastcache
from vxlanpy.batch import FrameBatch
from vxlanpy.engine import Engine, SegmentConfig
from vxlanpy.fastcache import FastPath, set_source
from vxlanpy.fdb import FdbError, Remote
from vxlanpy.wire import ZERO_MAC, encode_header

if not fastcache.available():
    if os.environ.get("VXLANPY_REQUIRE_C", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ImportError("the C datapath is required (VXLANPY_REQUIRE_C) but not selected")
    pytest.skip("the C datapath needs the cffi backend", allow_module_level=True)

VNI = 42
REMOTES = ["198.18.0.2", "198.18.0.3", "198.18.0.4"]
MACS = [bytes([2, 0, 0, 0, 0, k]) for k in range(1, 7)]
LOCAL = bytes([2, 0, 0, 0, 0, 0xAA])
BCAST = b"\xff" * 6


def frame(dst: bytes, src: bytes, n: int = 0) -> bytes:
    """An IPv4/UDP frame (the flow hash differs with n)."""
    ip = bytes([0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 198, 19, 0, 1, 198, 19, 0, 2])
    udp = bytes([0x30, n & 0xFF, 0x30, 0x39, 0, 8, 0, 0])
    return dst + src + b"\x08\x00" + ip + udp


def make_engine(fast: bool, ageing: float, learning: bool = True) -> Engine:
    e = Engine(backend="cffi")
    e.add_segment(
        SegmentConfig(
            vni=VNI, remotes=REMOTES[:2], ageing=ageing, learning=learning, local_mac=LOCAL
        )
    )
    if fast:
        e.attach_fastpath(FastPath(e.srcport))
    return e


def tx(e: Engine, frames: list[bytes], now: float, fast: bool) -> list[tuple[Any, ...]]:
    b = FrameBatch(8, 256)
    for f in frames:
        b.append_frame(f, VNI)
    if fast:
        e.forward_frames(VNI, b, now)
    else:
        e.handle_frames(VNI, b, now)
    out = sorted((d.host, d.port, d.sport, d.vni, bytes(d.payload)) for d in e.datagrams_to_send())
    out += sorted((f.vni, bytes(f.frame)) for f in e.frames_to_device())
    return out


def rx(e: Engine, items: list[tuple[str, bytes]], now: float, fast: bool) -> list[Any]:
    b = FrameBatch(8, 256)
    for k, (src, f) in enumerate(items):
        b.append_payload(encode_header(VNI) + f)
        set_source(b, k, src)
    if fast:
        e.forward_datagrams(b, now)
    else:
        e.handle_datagrams(b, [s for s, _ in items], now)
    # the same frames; the C path writes its hits before the upcalls, so the order is only
    # kept per source MAC
    out = [(f.vni, bytes(f.frame)) for f in e.frames_to_device()]
    by_mac: dict[bytes, list[Any]] = {}
    for vni, f in out:
        by_mac.setdefault(f[6:12], []).append((vni, f))
    return sorted(by_mac.items())


def mirror_agrees(e: Engine) -> None:
    fp = e.fastpath
    assert fp is not None
    fdb = e.segment(VNI).fdb
    cached = fp.dump(VNI)
    expected: dict[bytes, tuple[Any, bool]] = {}
    for m, rs in fdb.static_items():
        one = len(rs) == 1 and rs[0].vni in (None, VNI)
        expected[m] = ((rs[0].ip, rs[0].port or e.dstport) if one else None, True)
    for m, ip, _t in fdb.learned_items():
        expected[m] = ((ip, e.dstport), False)
    assert {m: (c.remote, c.static) for m, c in cached.items()} == expected
    for m, _ip, t in fdb.learned_items():
        assert cached[m].seen >= t - 0.0005


ops = st.one_of(
    st.tuples(
        st.just("tx"),
        st.lists(
            st.tuples(st.sampled_from([*MACS, BCAST]), st.integers(0, 3)), min_size=1, max_size=6
        ),
    ),
    st.tuples(
        st.just("rx"),
        st.lists(
            st.tuples(st.sampled_from(REMOTES), st.sampled_from([*MACS, LOCAL, BCAST, ZERO_MAC])),
            min_size=1,
            max_size=6,
        ),
    ),
    st.tuples(
        st.sampled_from(["add", "replace", "append", "del"]),
        st.sampled_from(MACS),
        st.sampled_from(REMOTES),
    ),
    st.tuples(st.just("wait"), st.floats(0.1, 40.0)),
    st.tuples(st.just("learning"), st.booleans()),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=st.lists(ops, max_size=40), ageing=st.sampled_from([0.0, 30.0, 300.0]))
def test_fast_and_slow_path_agree(history: list[tuple[Any, ...]], ageing: float) -> None:
    fast, slow = make_engine(True, ageing), make_engine(False, ageing)
    now = 1000.0
    for op in history:
        kind = op[0]
        results = []
        for e, is_fast in ((fast, True), (slow, False)):
            if kind == "tx":
                fr = [frame(dst, MACS[0], n) for dst, n in op[1]]
                results.append(tx(e, fr, now, is_fast))
            elif kind == "rx":
                items = [(src, frame(LOCAL, smac)) for src, smac in op[1]]
                results.append(rx(e, items, now, is_fast))
            elif kind == "wait":
                pass
            elif kind == "learning":
                e.segment(VNI).fdb.learning = op[1]
            else:
                fdb = e.segment(VNI).fdb
                try:
                    r = Remote.make(op[2])
                    if kind == "del":
                        fdb.delete(op[1], r)
                    else:
                        getattr(fdb, kind)(op[1], r)
                    results.append("ok")
                except FdbError as exc:
                    results.append(type(exc).__name__)
        if kind == "wait":
            now += op[1]
            for e in (fast, slow):
                e.handle_timer(now)
        assert results[0] == results[1] if results else True, op
        assert list(fast.events()) == list(slow.events()), op
        fast.sync_fastpath()
        mirror_agrees(fast)
    st_fast, st_slow = fast.segment_stats(VNI), slow.segment_stats(VNI)
    for k in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "learned", "moved", "aged"):
        assert st_fast[k] == st_slow[k], k
    assert st_fast["drops"] == st_slow["drops"]


def test_hits_stay_in_c() -> None:
    """A learned MAC is forwarded by C both ways after the first frame: no upcall, and the
    refresh seen only by C keeps the entry from ageing out."""
    e = make_engine(True, 30.0)
    fp = e.fastpath
    assert fp is not None
    peer = bytes([2, 0, 0, 0, 0, 0x0B])
    rx(e, [(REMOTES[2], frame(LOCAL, peer))], 100.0, True)  # learned (upcall)
    assert [type(ev).__name__ for ev in e.events()] == ["MacLearned"]
    b = FrameBatch(4, 256)
    for k in range(3):
        b.append_payload(encode_header(VNI) + frame(LOCAL, peer, k))
        set_source(b, k, REMOTES[2])
    e.sync_fastpath()
    assert fp.rx_classify(b, 125.0) == 3  # delivered by C, refreshed at t=125
    t = FrameBatch(4, 256)
    t.append_frame(frame(peer, LOCAL), VNI)
    assert fp.tx_classify(VNI, t) == 1
    assert fp.remote(t.action[0]) == (REMOTES[2], 4789)
    e.handle_timer(131.0)  # due at 130 by the FDB's own time, but C saw it at 125
    assert e.segment(VNI).fdb.lookup(peer) is not None
    e.handle_timer(156.0)
    assert e.segment(VNI).fdb.lookup(peer) is None
    e.sync_fastpath()
    assert fp.get(VNI, peer) is None
    assert fp.tx_classify(VNI, t) == 0  # unknown again: upcall (flood)


def test_moves_and_spoofs_go_up() -> None:
    e = make_engine(True, 300.0)
    fp = e.fastpath
    assert fp is not None
    peer = bytes([2, 0, 0, 0, 0, 0x0C])
    rx(e, [(REMOTES[0], frame(LOCAL, peer))], 1.0, True)
    e.sync_fastpath()
    b = FrameBatch(2, 256)
    b.append_payload(encode_header(VNI) + frame(LOCAL, peer))
    set_source(b, 0, REMOTES[1])
    assert fp.rx_classify(b, 2.0) == 0 and b.action[0] == fastcache.UPCALL
    e.segment(VNI).fdb.replace(peer, Remote.make(REMOTES[2]))  # static now
    e.sync_fastpath()
    assert fp.get(VNI, peer) == fastcache.CacheEntry((REMOTES[2], 4789), True, 0.0)
    assert fp.rx_classify(b, 3.0) == 0  # a static MAC from another VTEP: Python drops it
    set_source(b, 0, REMOTES[2])
    assert fp.rx_classify(b, 3.0) == 1


def test_counters_and_segments() -> None:
    e = make_engine(True, 300.0)
    fp = e.fastpath
    assert fp is not None
    assert fp.counters(VNI)["rx_packets"] == 0
    e.segment(VNI).fdb.add(MACS[1], Remote.make(REMOTES[0]))
    b = FrameBatch(2, 256)
    b.append_payload(encode_header(VNI) + frame(LOCAL, MACS[1]))
    set_source(b, 0, REMOTES[0])
    e.forward_datagrams(b, 1.0)
    assert fp.counters(VNI)["rx_packets"] == 1
    assert e.segment_stats(VNI)["rx_packets"] == 1
    b.append_payload(encode_header(7) + frame(LOCAL, MACS[1]))  # a VNI nobody serves
    set_source(b, 1, REMOTES[0])
    e.forward_datagrams(b, 1.0)
    assert e.counters.drops  # the engine recorded why (upcall)
    e.remove_segment(VNI)
    assert fp.dump(VNI) == {}


def test_replaced_fdb_leaves_nothing_behind() -> None:
    """An FDB object swapped for a new one is mirrored afresh: no entry of the old survives."""
    e = make_engine(True, 300.0)
    fp = e.fastpath
    assert fp is not None
    seg = e.segment(VNI)
    seg.fdb.add(MACS[2], Remote.make("198.18.0.9"))
    e.sync_fastpath()
    assert fp.get(VNI, MACS[2]) is not None
    seg.fdb = type(seg.fdb)()
    e.sync_fastpath()
    assert fp.dump(VNI) == {}


def test_failed_push_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    e = make_engine(True, 300.0)
    fp = e.fastpath
    assert fp is not None
    e.segment(VNI).fdb.add(MACS[3], Remote.make(REMOTES[0]))

    def boom(*_a: object) -> None:
        raise MemoryError("full")

    monkeypatch.setattr(fp, "put", boom)
    with pytest.raises(MemoryError):
        e.sync_fastpath()
    monkeypatch.undo()
    e.sync_fastpath()
    assert fp.get(VNI, MACS[3]) is not None


def test_batches_past_the_c_limit_are_refused() -> None:
    e = make_engine(True, 300.0)
    fp = e.fastpath
    assert fp is not None
    with pytest.raises(ValueError, match="at most"):
        fp.tx_classify(VNI, FrameBatch(fastcache.MAX_BATCH + 1, 64))
