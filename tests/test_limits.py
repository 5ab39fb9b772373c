"""What other VTEPs can make a VTEP keep: the learning cap and rate limit of the FDB, the
bounded rate limiter, and the allowlist, in the sans-I/O engine (both kernel backends)."""

from __future__ import annotations

import pytest
from test_engine import A_IP, B_IP, C_IP, HB, VNI, Vtep, backends, icmp, mac, vxlan_payload

from vxlanpy.batch import FrameBatch
from vxlanpy.engine import Engine, SegmentConfig
from vxlanpy.events import Dropped, LearnRefused, MacLearned
from vxlanpy.fdb import DEFAULT_MAX_LEARNED, Fdb, LearnResult, Remote
from vxlanpy.limits import CONFIGURED, Allowlist, RateLimiter
from vxlanpy.wire import DropReason, encode_header


def _mac(k: int) -> bytes:
    return bytes([2, 0, (k >> 16) & 0xFF, (k >> 8) & 0xFF, k & 0xFF, 1])


def test_rate_limiter_buckets() -> None:
    r = RateLimiter(10, burst=5)
    assert [r.allow("a", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert r.allow("b", 0.0)  # another key has its own bucket
    assert not r.allow("a", 0.05)  # half a token back
    assert r.allow("a", 0.2)  # two tokens back: one taken
    assert r.allow("a", 0.15)  # the one left
    assert not r.allow("a", 0.1)  # a clock that went back gives nothing
    assert RateLimiter(0).allow("x", 0.0)  # 0: no limit


def test_rate_limiter_keeps_at_most_max_keys() -> None:
    r = RateLimiter(1, burst=1, max_keys=100)
    for k in range(10_000):  # forged sources cannot grow it
        r.allow(f"10.0.{k >> 8}.{k & 255}", 0.0)
    assert len(r) == 100


def test_fdb_learning_is_bounded_by_default() -> None:
    fdb = Fdb(learn_rate=0)  # the cap alone
    assert fdb.max_learned == DEFAULT_MAX_LEARNED
    results = [fdb.learn(_mac(k), A_IP, 0.0)[0] for k in range(DEFAULT_MAX_LEARNED + 10)]
    assert results.count(LearnResult.NEW) == DEFAULT_MAX_LEARNED
    assert results[-10:] == [LearnResult.REFUSED] * 10
    assert fdb.learn(_mac(0), B_IP, 1.0)[0] is LearnResult.MOVED  # a move is not a new entry
    assert Fdb(max_learned=0, learn_rate=0).max_learned == 0


def test_fdb_learn_rate_per_remote() -> None:
    fdb = Fdb(learn_rate=100)
    got = [fdb.learn(_mac(k), A_IP, 0.0)[0] for k in range(150)]
    assert got.count(LearnResult.NEW) == 100 and got[-1] is LearnResult.RATE_LIMITED
    assert fdb.learn(_mac(1000), B_IP, 0.0)[0] is LearnResult.NEW  # another VTEP: own bucket
    assert fdb.learn(_mac(2000), A_IP, 0.5)[0] is LearnResult.NEW  # tokens come back


def test_allowlist() -> None:
    a = Allowlist(["198.18.0.0/30", CONFIGURED])
    assert a.permits("198.18.0.2") and not a.permits("198.18.0.9")
    assert a.permits("198.18.0.9", {"198.18.0.9"})
    assert not Allowlist("198.18.0.1/32").permits("2001:db8::1")
    with pytest.raises(ValueError):
        Allowlist(["nonsense"])


@backends
def test_refusals_are_counted_and_reported_once_a_second(backend: str) -> None:
    b = Vtep(B_IP, backend, remotes=(A_IP,), max_learned=3, learn_rate=0)
    for k in range(10):
        frame = icmp(f"02:00:00:00:05:{k:02x}", HB, "198.19.0.5", "198.19.0.2")
        b.engine.handle_datagram(vxlan_payload(frame, VNI), A_IP, 1.0 + k * 0.25)
    b.collect()
    assert len(b.take_device()) == 10  # refused learning still delivers
    events = b.events()
    assert [type(e) for e in events] == [MacLearned] * 3 + [LearnRefused, LearnRefused]
    assert events[3] == LearnRefused(VNI, A_IP, "full", 1)  # the first at once
    assert events[4] == LearnRefused(VNI, A_IP, "full", 4)  # a second later, with a count
    assert b.seg.counters.learn_refused == 7


@backends
def test_allowlist_drops_and_learns_nothing(backend: str) -> None:
    b = Vtep(B_IP, backend, remotes=(A_IP,), allow=["198.18.0.1/32"])
    frame = icmp("02:00:00:00:06:01", HB, "198.19.0.6", "198.19.0.2")
    b.engine.handle_datagram(vxlan_payload(frame, VNI), C_IP, 1.0)
    b.collect()
    assert b.take_device() == []
    assert b.events() == [Dropped(DropReason.NOT_ALLOWED, VNI, C_IP)]
    assert b.seg.fdb.lookup(mac("02:00:00:00:06:01")) is None
    assert b.seg.counters.drops[DropReason.NOT_ALLOWED] == 1
    b.engine.handle_datagram(vxlan_payload(frame, VNI), A_IP, 1.0)  # A is in the list
    b.collect()
    assert len(b.take_device()) == 1


@backends
def test_allowlist_of_the_configured_remotes_follows_the_fdb(backend: str) -> None:
    b = Vtep(B_IP, backend, remotes=(A_IP,), allow=CONFIGURED)
    frame = icmp("02:00:00:00:07:01", HB, "198.19.0.7", "198.19.0.2")
    for src, want in ((A_IP, 1), (C_IP, 0)):
        b.engine.handle_datagram(vxlan_payload(frame, VNI), src, 1.0)
        b.collect()
        assert len(b.take_device()) == want, src
    b.seg.fdb.add(mac("02:00:00:00:07:09"), Remote.make(C_IP))
    b.engine.handle_datagram(vxlan_payload(frame, VNI), C_IP, 2.0)  # C is configured now
    b.collect()
    assert len(b.take_device()) == 1


def test_a_full_fdb_costs_no_upcalls() -> None:
    """Past max_learned, frames from new MACs are delivered by C and counted refused there;
    once an entry ages out, new MACs go up to be learned again."""
    pytest.importorskip("vxlanpy._native")
    from vxlanpy import stats
    from vxlanpy.datapath import Datapath, set_source

    e = Engine(backend="cffi")
    e.add_segment(SegmentConfig(vni=5, remotes=["198.18.0.2"], max_learned=4, ageing=10))
    e.attach_datapath(Datapath())
    dp = e.datapath
    assert dp is not None

    def batch(first: int, n: int) -> FrameBatch:
        b = FrameBatch(n, 128)
        for k in range(n):
            src = bytes([2, 0, 0, 1, 0, first + k])
            b.append_payload(encode_header(5) + b"\x02" * 6 + src + b"\x08\x00" + bytes(46))
            set_source(b, k, "198.18.0.2")
        return b

    e.forward_datagrams(batch(0, 4), 1.0)  # learned: the FDB is full now
    assert e.segment(5).fdb.learned_count == 4
    e.sync_datapath()
    b = batch(10, 8)
    assert dp.rx_classify(b, 2.0) == 8  # all delivered in C, nothing went up
    st = stats.segment_stats(e, 5)
    assert st["learn_refused"] == 8 and st["learned"] == 4 and st["rx_packets"] >= 12
    e.handle_timer(12.0)  # the four age out
    e.sync_datapath()
    b = batch(20, 2)
    assert dp.rx_classify(b, 12.5) == 0  # new MACs go up again, to be learned
