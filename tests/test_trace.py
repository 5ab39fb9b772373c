"""``trace`` (what would happen) against what the dataplane then really does, for each case of
the engine's rule list, with and without the C fast path: the trace runs on a copy of the
state; then the real engine (untraced) handles the same packet, and its datagrams, device
frames, counters and FDB must be what the trace said. Also: tracing a batch changes nothing
in what the engine does, and leaves the original state untouched."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pytest

from vxlanpy import datapath as datapath_mod
from vxlanpy.batch import FrameBatch
from vxlanpy.datapath import Datapath, set_source
from vxlanpy.engine import Engine, SegmentConfig
from vxlanpy.fdb import Remote
from vxlanpy.framedesc import build_frame, describe_frame
from vxlanpy.trace import FAST_PATH, TraceFilter, Tracer, TraceRecord
from vxlanpy.tracesim import clone_engine, simulate
from vxlanpy.wire import encode_header, parse_mac

VNI = 42
LOCAL = parse_mac("02:00:00:00:00:01")
STATIC = "02:00:00:00:00:09"
PEERS = ["198.18.0.2", "198.18.0.3"]
REQUIRE_C = os.environ.get("VXLANPY_REQUIRE_C", "").strip().lower() in ("1", "true", "yes")


def _fast_params() -> list[Any]:
    c = pytest.param(True, id="fast-path")
    if not datapath_mod.available() and not REQUIRE_C:
        c = pytest.param(True, id="fast-path", marks=pytest.mark.skip(reason="no C datapath"))
    return [pytest.param(False, id="engine"), c]


@pytest.fixture(params=_fast_params())
def fast(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def make_engine(fast: bool, **seg: Any) -> Engine:
    e = Engine()
    cfg: dict[str, Any] = {
        "vni": VNI,
        "remotes": PEERS,
        "proxy": True,
        "local_mac": LOCAL,
        "neigh": [("198.19.0.9", parse_mac(STATIC))],
        "fdb": [(parse_mac(STATIC), Remote.make("198.18.0.9"))],
    }
    cfg.update(seg)
    e.add_segment(SegmentConfig(**cfg))
    if fast:
        e.attach_datapath(Datapath())
    return e


@dataclass
class Real:
    """What the real engine did with one packet."""

    datagrams: list[tuple[str, int, int]]
    to_device: list[bytes]
    counters: dict[str, Any]
    drops: dict[str, int]
    c_handled: bool
    events: list[dict[str, Any]] = field(default_factory=list)


def _drops(e: Engine) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in [e.counters, *(s.counters for s in e.segments.values())]:
        for r, n in c.drops.items():
            out[r.value] = out.get(r.value, 0) + n
    return out


def real_tx(e: Engine, frame: bytes, now: float = 1.0) -> Real:
    before = _drops(e)
    b = FrameBatch(1, max(len(frame), 14))
    b.append_frame(frame, VNI)
    if e.datapath is not None:
        e.forward_frames(VNI, b, now)
    else:
        e.handle_frames(VNI, b, now)
    dgs = [(d.host, d.port, d.vni) for d in e.datagrams_to_send()]
    dev = [bytes(f.frame) for f in e.frames_to_device()]
    after = _drops(e)
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    c_hit = e.datapath is not None and b.action[0] > 0
    evs = [ev.to_dict() for ev in e.events()]
    return Real(dgs, dev, e.segment(VNI).counters.to_dict(), delta, c_hit, evs)


def real_rx(e: Engine, payload: bytes, source: str, now: float = 1.0) -> Real:
    before = _drops(e)
    b = FrameBatch(1, max(len(payload), 22))
    b.append_payload(payload)
    set_source(b, 0, source)
    if e.datapath is not None:
        e.forward_datagrams(b, now)
    else:
        e.handle_datagrams(b, [source], now)
    dev = [bytes(f.frame) for f in e.frames_to_device()]
    after = _drops(e)
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    c_hit = e.datapath is not None and b.action[0] >= 0
    evs = [ev.to_dict() for ev in e.events()]
    return Real([], dev, e.segment(VNI).counters.to_dict(), delta, c_hit, evs)


def trace_then_do_tx(e: Engine, words: str | bytes) -> tuple[TraceRecord, Real]:
    frame = build_frame(words.split()) if isinstance(words, str) else words
    out = simulate(clone_engine(e), now=1.0, vni=VNI, frame=frame)
    assert len(out.records) == 1, out.records
    rec = out.records[0]
    real = real_tx(e, frame)
    # what the trace said is what the dataplane did
    assert [(h.ip, h.port, h.vni) for h in rec.remotes] == real.datagrams
    assert [(d.host, d.port, d.vni) for d in out.datagrams] == real.datagrams
    assert (rec.verdict == "proxied") == bool(real.to_device)
    assert real.drops == ({rec.drop: 1} if rec.drop else {})
    assert (rec.handler == FAST_PATH) == real.c_handled
    assert [ev.to_dict() for ev in out.events] == real.events
    return rec, real


def trace_then_do_rx(e: Engine, payload: bytes, source: str) -> tuple[TraceRecord, Real]:
    out = simulate(clone_engine(e), now=1.0, payload=payload, source=source)
    assert len(out.records) == 1, out.records
    rec = out.records[0]
    real = real_rx(e, payload, source)
    assert (rec.verdict == "delivered") == (len(real.to_device) == 1)
    assert [bytes(f.frame) for f in out.to_device] == real.to_device
    assert real.drops == ({rec.drop: 1} if rec.drop else {})
    assert (rec.handler == FAST_PATH) == real.c_handled
    assert [ev.to_dict() for ev in out.events] == real.events
    return rec, real


def rx_payload(
    src: str, dst: str = "02:00:00:00:00:01", vni: int = VNI, vlan: bool = False
) -> bytes:
    words = f"dst {dst} src {src}" + (" vlan 7" if vlan else "") + " ip 198.19.0.5 198.19.0.1"
    return encode_header(vni) + build_frame(words.split())


def test_unicast_hit(fast: bool) -> None:
    e = make_engine(fast)
    rec, real = trace_then_do_tx(e, f"dst {STATIC} ip 198.19.0.1 198.19.0.9 udp")
    assert (rec.rule, rec.step, rec.fdb, rec.verdict) == ("fdb-hit", "tx.5", "static", "sent")
    assert real.datagrams == [("198.18.0.9", 4789, VNI)]
    assert rec.handler == (FAST_PATH if fast else "engine")
    assert rec.outer is not None and rec.payload[8:] == build_frame(
        f"dst {STATIC} ip 198.19.0.1 198.19.0.9 udp".split()
    )


def test_flood(fast: bool) -> None:
    e = make_engine(fast)
    rec, real = trace_then_do_tx(e, "dst ff:ff:ff:ff:ff:ff ip 198.19.0.1 198.19.0.255 udp")
    assert (rec.rule, rec.step, rec.verdict) == ("flood", "tx.4", "sent")
    assert sorted(ip for ip, _, _ in real.datagrams) == PEERS
    assert real.counters["floods"] == 1


def test_l2_miss(fast: bool) -> None:
    e = make_engine(fast)
    rec, real = trace_then_do_tx(e, "dst 02:00:00:00:00:77 ip 198.19.0.1 198.19.0.77")
    assert (rec.rule, rec.step, rec.fdb, rec.handler) == ("l2-miss", "tx.5", "miss", "engine")
    assert real.counters["l2_misses"] == 1 and len(real.datagrams) == 2


def test_no_destination(fast: bool) -> None:
    e = make_engine(fast, remotes=[])
    rec, real = trace_then_do_tx(e, "dst 02:00:00:00:00:77 ip 198.19.0.1 198.19.0.77")
    assert (rec.rule, rec.step, rec.verdict) == ("no-destination", "tx.6", "dropped")
    assert real.drops == {"no-destination": 1}


def test_proxy_answer(fast: bool) -> None:
    e = make_engine(fast)
    rec, real = trace_then_do_tx(e, "arp who-has 198.19.0.9 tell 198.19.0.1")
    assert (rec.rule, rec.step, rec.verdict, rec.proxy) == ("proxy-arp", "tx.3", "proxied", STATIC)
    assert real.datagrams == [] and real.counters["arp_proxied"] == 1
    assert "is-at 02:00:00:00:00:09" in describe_frame(real.to_device[0])


def test_l3_miss(fast: bool) -> None:
    e = make_engine(fast)
    rec, real = trace_then_do_tx(e, "arp who-has 198.19.0.99 tell 198.19.0.1")
    assert (rec.rule, rec.step, rec.verdict) == ("l3-miss", "tx.3", "dropped")
    assert real.counters["l3_misses"] == 1 and real.drops == {"l3-miss": 1}


def test_vlan_drop_both_ways(fast: bool) -> None:
    e = make_engine(fast)
    rec, _ = trace_then_do_tx(e, f"dst {STATIC} vlan 7 ip 198.19.0.1 198.19.0.9")
    assert (rec.rule, rec.step, rec.verdict) == ("vlan-tagged", "tx.2", "dropped")
    rec, real = trace_then_do_rx(e, rx_payload("02:00:00:00:00:05", vlan=True), PEERS[0])
    assert (rec.rule, rec.step, rec.verdict) == ("vlan-tagged", "rx.3", "dropped")
    assert real.drops == {"vlan-tagged": 1}


def test_learn_then_refresh_then_move(fast: bool) -> None:
    e = make_engine(fast)
    mac = "02:00:00:00:00:05"
    rec, real = trace_then_do_rx(e, rx_payload(mac), PEERS[0])
    assert (rec.rule, rec.step, rec.learn, rec.verdict) == ("deliver", "rx.5", "new", "delivered")
    assert rec.handler == "engine" and real.counters["learned"] == 1
    assert e.segment(VNI).fdb.lookup(parse_mac(mac)) == (Remote.make(PEERS[0]),)
    rec, _ = trace_then_do_rx(e, rx_payload(mac), PEERS[0])
    assert rec.learn == "refreshed" and rec.fdb == "learned"
    assert rec.handler == (FAST_PATH if fast else "engine")  # a known flow: C delivers it
    rec, real = trace_then_do_rx(e, rx_payload(mac), PEERS[1])
    assert rec.learn == f"moved from {PEERS[0]}" and real.counters["moved"] == 1
    assert e.segment(VNI).fdb.lookup(parse_mac(mac)) == (Remote.make(PEERS[1]),)


def test_spoofed_static(fast: bool) -> None:
    e = make_engine(fast)
    rec, real = trace_then_do_rx(e, rx_payload(STATIC), PEERS[0])  # its VTEP is 198.18.0.9
    assert (rec.rule, rec.step, rec.verdict) == ("spoofed-static", "rx.4", "dropped")
    assert real.drops == {"spoofed-static": 1}
    rec, _ = trace_then_do_rx(e, rx_payload(STATIC), "198.18.0.9")  # from its own VTEP
    assert (rec.verdict, rec.learn) == ("delivered", "static")


def test_unknown_vni_and_bad_headers(fast: bool) -> None:
    e = make_engine(fast)
    rec, _ = trace_then_do_rx(e, rx_payload("02:00:00:00:00:05", vni=43), PEERS[0])
    assert (rec.rule, rec.step, rec.vni, rec.source) == ("unknown-vni", "rx.2", 43, PEERS[0])
    no_i = b"\x00" + rx_payload("02:00:00:00:00:05")[1:]
    rec, _ = trace_then_do_rx(e, no_i, PEERS[0])
    assert (rec.rule, rec.step, rec.vni, rec.verdict) == ("no-i-flag", "rx.1", None, "dropped")
    rec, _ = trace_then_do_rx(e, b"\x08\x00\x00", PEERS[0])
    assert (rec.rule, rec.step) == ("too-short", "rx.1")
    rec, _ = trace_then_do_rx(e, rx_payload("01:00:5e:00:00:01"), PEERS[0])
    assert (rec.rule, rec.step) == ("bad-source-mac", "rx.3")
    rec, _ = trace_then_do_rx(e, rx_payload("02:00:00:00:00:01"), PEERS[0])
    assert (rec.rule, rec.step) == ("looped", "rx.3")


def test_allowlist(fast: bool) -> None:
    e = make_engine(fast, allow=["198.18.0.0/31"])
    rec, real = trace_then_do_rx(e, rx_payload("02:00:00:00:00:05"), PEERS[1])
    assert (rec.rule, rec.step) == ("source-not-allowed", "rx.2")
    assert real.drops == {"source-not-allowed": 1} and real.counters["learned"] == 0


def test_the_copy_leaves_the_original_alone(fast: bool) -> None:
    e = make_engine(fast)
    out = simulate(
        clone_engine(e), now=1.0, payload=rx_payload("02:00:00:00:00:05"), source=PEERS[0]
    )
    assert out.records[0].learn == "new"
    assert e.segment(VNI).fdb.lookup(parse_mac("02:00:00:00:00:05")) is None
    assert e.segment(VNI).counters.learned == 0 and list(e.events()) == []


def _mixed_batch() -> FrameBatch:
    b = FrameBatch(8, 1600)
    for w in (
        f"dst {STATIC} ip 198.19.0.1 198.19.0.9",
        "dst ff:ff:ff:ff:ff:ff ip 198.19.0.1 198.19.0.255",
        "arp who-has 198.19.0.9 tell 198.19.0.1",
        "arp who-has 198.19.0.99",
        "dst 02:00:00:00:00:77 ip 198.19.0.1 198.19.0.77",
        f"dst {STATIC} vlan 3 ip 198.19.0.1 198.19.0.9",
    ):
        b.append_frame(build_frame(w.split()), VNI)
    return b


def test_tracing_changes_nothing(fast: bool) -> None:
    plain, traced = make_engine(fast), make_engine(fast)
    records: list[TraceRecord] = []
    traced.tracer = Tracer()
    traced.tracer.add(records.append)
    drops_only: list[TraceRecord] = []
    traced.tracer.add(drops_only.append, TraceFilter(drops=True))
    outs = []
    for e in (plain, traced):
        b = _mixed_batch()
        if fast:
            e.forward_frames(VNI, b, 1.0)
        else:
            e.handle_frames(VNI, b, 1.0)
        dgs = [(d.host, d.port, d.vni, d.sport, bytes(d.payload)) for d in e.datagrams_to_send()]
        dev = [bytes(f.frame) for f in e.frames_to_device()]
        outs.append(
            (dgs, dev, e.segment(VNI).counters.to_dict(), [x.to_dict() for x in e.events()])
        )
    assert outs[0] == outs[1]
    # the fast path's records come first (C handles its slots before the upcalls)
    rules = ["fdb-hit", "flood", "proxy-arp", "l3-miss", "l2-miss", "vlan-tagged"]
    assert sorted(r.rule for r in records) == sorted(rules)
    if not fast:
        assert [r.rule for r in records] == rules
    assert sorted(r.rule for r in drops_only) == ["l3-miss", "vlan-tagged"]


def test_filters() -> None:
    rec = TraceRecord(
        "rx",
        42,
        "engine",
        "dropped",
        "looped",
        "rx.3",
        build_frame("dst 02:00:00:00:00:01 src 02:00:00:00:00:05 ip 198.19.0.5 198.19.0.1".split()),
    )
    assert TraceFilter(
        vni=42, mac="02:00:00:00:00:05", ip="198.19.0.1", direction="rx", drops=True
    ).matches(rec)
    assert not TraceFilter(vni=43).matches(rec)
    assert not TraceFilter(mac="02:00:00:00:00:06").matches(rec)
    assert not TraceFilter(ip="198.19.0.6").matches(rec)
    assert not TraceFilter(direction="tx").matches(rec)
    d = rec.to_dict(with_bytes=True)
    assert TraceRecord.from_dict(d).to_dict(with_bytes=True) == d


def test_a_slow_client_loses_records_not_the_dataplane() -> None:
    """TraceStream: records past its queue are dropped and counted, never waited for; the
    stream ends at its count or timeout; the tracer goes when its last sink does."""
    import asyncio

    from vxlanpy.trace_live import TraceStream

    class FakeVtep:
        def __init__(self) -> None:
            self.engine = make_engine(False)

        async def wait_stopped(self) -> None:
            await asyncio.sleep(3600)

    async def main() -> None:
        v = FakeVtep()
        ts = TraceStream(v, TraceFilter(), maxsize=4)  # type: ignore[arg-type]
        assert v.engine.tracer is not None
        b = _mixed_batch()
        v.engine.handle_frames(VNI, b, 1.0)  # 6 records, room for 4: the engine does not wait
        assert (ts.queue.qsize(), ts.lost) == (4, 2)
        got = [r.rule async for r in ts.records(count=3, timeout=5)]
        assert got == ["fdb-hit", "flood", "proxy-arp"]
        t0 = asyncio.get_running_loop().time()
        rest = [r.rule async for r in ts.records(count=10, timeout=0.2)]
        assert rest == ["l3-miss"] and asyncio.get_running_loop().time() - t0 < 2
        ts.close()
        assert v.engine.tracer is None  # off again: nothing to check per packet

    asyncio.run(main())


def test_a_failing_sink_is_removed_and_forwarding_goes_on() -> None:
    e = make_engine(False)
    e.tracer = Tracer()

    def full(rec: TraceRecord) -> None:
        raise OSError(28, "No space left on device")

    kept: list[TraceRecord] = []
    e.tracer.add(full)
    e.tracer.add(kept.append)
    e.handle_frames(VNI, _mixed_batch(), 1.0)
    assert len(e.datagrams_to_send()) == 1 + 2 + 2  # hit, flood, L2 miss flooded
    assert len(kept) == 6 and len(e.tracer) == 1 and "No space" in e.tracer.failed[0]


def test_nd_proxy_answer_and_dad(fast: bool) -> None:
    from scapy.compat import raw
    from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
    from scapy.layers.l2 import Ether

    e = make_engine(fast, neigh=[("2001:db8::9", parse_mac(STATIC))])
    eth = Ether(dst="33:33:ff:00:00:09", src="02:00:00:00:00:01")
    ns = IPv6(src="2001:db8::1", dst="ff02::1:ff00:9", hlim=255) / ICMPv6ND_NS(tgt="2001:db8::9")
    rec, real = trace_then_do_tx(
        e, raw(eth / ns / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:01"))
    )
    assert (rec.rule, rec.step, rec.verdict, rec.proxy) == ("proxy-nd", "tx.3", "proxied", STATIC)
    assert real.counters["nd_proxied"] == 1 and real.datagrams == []
    dad = IPv6(src="::", dst="ff02::1:ff00:9", hlim=255) / ICMPv6ND_NS(tgt="2001:db8::9")
    rec, real = trace_then_do_tx(e, raw(eth / dad))
    assert (rec.rule, rec.step, rec.verdict) == ("nd-dad", "tx.3", "dropped")
