"""The C datapath (fast path) against the Python engine (slow path).

Two engines get the same random history: frames from the devices of two segments (unicast,
broadcast, ARP requests and IPv6 neighbour solicitations for the proxy, VLAN-tagged),
datagrams from three remote VTEPs (learning and moves, tagged frames, bad source MACs,
unknown VNIs, reserved header bits), admin ``fdb`` changes with per-entry port and VNI
overrides, neighbour entries (IPv4 and IPv6), settings switched at run time
(learning, proxy, VLANs, strict parsing, allowlists), an FDB address limit, a cap and a rate
limit on learning, time passing (ageing), and VXLAN-GBP headers, with a third segment that
has GBP on in some runs.
Engine ``fast`` forwards through the C datapath (what the engine installed is done in C, the
rest comes back as upcalls); engine ``slow`` is the plain Python engine. After every step both
must have produced the same datagrams, device frames and events, and the datapath must hold
exactly what the FDB says (targets, static or learned), with a last-seen time at least as
recent as the FDB's.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vxlanpy import datapath as datapath_mod
from vxlanpy import stats
from vxlanpy.abi import MAX_BATCH, EntryFlag, Verdict
from vxlanpy.batch import FrameBatch
from vxlanpy.datapath import Datapath, Entry, Target, set_source
from vxlanpy.engine import Engine, SegmentConfig
from vxlanpy.fdb import FdbError, Remote
from vxlanpy.gbp import Policy
from vxlanpy.limits import CONFIGURED, Allowlist
from vxlanpy.neigh import NeighExists, NeighNotFound
from vxlanpy.wire import ZERO_MAC, encode_header

if not datapath_mod.available():
    if os.environ.get("VXLANPY_REQUIRE_C", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ImportError("the C datapath is required (VXLANPY_REQUIRE_C) but not selected")
    pytest.skip("the C datapath needs the cffi backend", allow_module_level=True)

VNI, VNI2, VNI3, UNKNOWN_VNI = 42, 43, 44, 7
VNIS = (VNI, VNI2, VNI3)  # VNI3 has VXLAN-GBP on in some runs
REMOTES = ["198.18.0.2", "198.18.0.3", "198.18.0.4"]
MACS = [bytes([2, 0, 0, 0, 0, k]) for k in range(1, 7)]
LOCAL = bytes([2, 0, 0, 0, 0, 0xAA])
BCAST = b"\xff" * 6
GROUP = bytes([0x33, 0x33, 0, 0, 0, 1])
IPS = ["198.19.0.1", "198.19.0.2", "198.19.0.3"]
IPS6 = ["2001:db8::1", "2001:db8::2"]


def frame(dst: bytes, src: bytes, n: int = 0, vlan: bool = False) -> bytes:
    """An IPv4/UDP frame (the flow hash differs with n), 802.1Q-tagged if ``vlan``."""
    ip = bytes([0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 198, 19, 0, 1, 198, 19, 0, 2])
    udp = bytes([0x30, n & 0xFF, 0x30, 0x39, 0, 8, 0, 0])
    tag = b"\x81\x00\x00\x05" if vlan else b""
    return dst + src + tag + b"\x08\x00" + ip + udp


def arp_request(src: bytes, target: str) -> bytes:
    tpa = bytes(int(x) for x in target.split("."))
    body = bytes([0, 1, 8, 0, 6, 4, 0, 1]) + src + bytes([198, 19, 0, 1]) + bytes(6) + tpa
    return BCAST + src + b"\x08\x06" + body + bytes(18)


def solicitation(target: str, dad: bool = False, code: int = 0, opt_units: int = 1) -> bytes:
    """An IPv6 neighbour solicitation from MACS[0] (the ICMPv6 checksum is left 0: the proxy
    does not check it, as the kernel's); ``opt_units`` 0: a malformed option."""
    tgt = ipaddress.IPv6Address(target).packed
    src = bytes(16) if dad else ipaddress.IPv6Address("2001:db8::a").packed
    dst = bytes.fromhex("ff0200000000000000000001ff") + tgt[-3:]
    icmp = bytes([135, code, 0, 0, 0, 0, 0, 0]) + tgt + bytes([1, opt_units]) + MACS[0]
    ip6 = b"\x60\x00\x00\x00" + len(icmp).to_bytes(2, "big") + b"\x3a\xff" + src + dst
    return b"\x33\x33\xff" + tgt[-3:] + MACS[0] + b"\x86\xdd" + ip6 + icmp


def make_engine(
    fast: bool,
    ageing: float,
    max_addresses: int = 0,
    max_learned: int = 0,
    rate: float = 0,
    gbp: bool = False,
) -> Engine:
    e = Engine(backend="cffi")
    e.add_segment(
        SegmentConfig(
            vni=VNI,
            remotes=REMOTES[:2],
            ageing=ageing,
            local_mac=LOCAL,
            max_addresses=max_addresses,
            max_learned=max_learned,
            learn_rate=rate,
        )
    )
    e.add_segment(
        SegmentConfig(vni=VNI2, remotes=REMOTES[2:], ageing=ageing, proxy=True, local_mac=LOCAL)
    )
    policies = {"gbp_group": Policy(0x1234), "gbp_macs": {MACS[0]: Policy(7, applied=True)}}
    e.add_segment(
        SegmentConfig(
            vni=VNI3, remotes=REMOTES[1:], ageing=ageing, local_mac=LOCAL, gbp=gbp,
            **(policies if gbp else {}),  # type: ignore[arg-type]
        )
    )  # fmt: skip
    if fast:
        e.attach_datapath(Datapath())
    return e


def tx(e: Engine, vni: int, frames: list[bytes], now: float, fast: bool) -> list[tuple[Any, ...]]:
    b = FrameBatch(8, 256)
    for f in frames:
        b.append_frame(f, vni)
    if fast:
        e.forward_frames(vni, b, now)
    else:
        e.handle_frames(vni, b, now)
    out = sorted((d.host, d.port, d.sport, d.vni, bytes(d.payload)) for d in e.datagrams_to_send())
    out += sorted((f.vni, bytes(f.frame)) for f in e.frames_to_device())
    return out


def rx(e: Engine, items: list[tuple[str, bytes]], now: float, fast: bool) -> list[Any]:
    b = FrameBatch(8, 256)
    for k, (src, payload) in enumerate(items):
        b.append_payload(payload)
        set_source(b, k, src)
    if fast:
        e.forward_datagrams(b, now)
    else:
        e.handle_datagrams(b, [s for s, _ in items], now)
    # the same frames; the C path writes its hits before the upcalls, so the order is only
    # kept per device (VNI) and source MAC
    by_mac: dict[tuple[int, bytes], list[bytes]] = {}
    for f in e.frames_to_device():
        by_mac.setdefault((f.vni, bytes(f.frame[6:12])), []).append(bytes(f.frame))
    return sorted(by_mac.items())


def mirror_agrees(e: Engine) -> None:
    """The datapath holds an entry for each MAC the FDB knows (and the device's own MAC), with
    the FDB's remotes as targets, and nothing else."""
    dp = e.datapath
    assert dp is not None
    for vni in VNIS:
        seg = e.segment(vni)
        fdb = seg.fdb
        installed = dp.dump(vni)
        want: dict[bytes, tuple[tuple[Target, ...], bool]] = {}
        for m, rs in fdb.static_items():
            targets = tuple(
                Target(r.ip, r.port or e.dstport, vni if r.vni is None else r.vni) for r in rs
            )
            want[m] = (targets, True)
        for m, ip, _t in fdb.learned_items():
            want[m] = ((Target(ip, e.dstport, vni),), False)
        if LOCAL not in want:
            want[LOCAL] = ((), False)
        assert {m: (x.targets, x.static) for m, x in installed.items()} == want
        assert not installed[LOCAL].flags & (EntryFlag.DELIVER | EntryFlag.DELIVER_ANY)
        if seg.gbp:
            continue  # every frame goes up: the engine refreshes its entries itself, not C
        for m, _ip, t in fdb.learned_items():
            assert installed[m].seen >= t - 0.0005


TX_FRAMES = st.one_of(
    st.tuples(st.sampled_from([*MACS, BCAST, GROUP]), st.integers(0, 3), st.booleans()).map(
        lambda t: frame(t[0], MACS[0], t[1], vlan=t[2])
    ),
    st.sampled_from(IPS).map(lambda ip: arp_request(MACS[0], ip)),
    st.tuples(
        st.sampled_from(IPS6),
        st.sampled_from([(False, 0, 1), (True, 0, 1), (False, 1, 1), (False, 0, 0)]),
    ).map(lambda t: solicitation(t[0], *t[1])),
    st.just(b"\x02" * 10),  # shorter than an Ethernet header
)
VALID = st.sampled_from(VNIS).map(encode_header)
HEADERS = st.one_of(
    VALID,
    VALID,
    VALID,
    st.just(encode_header(UNKNOWN_VNI)),
    st.just(b"\x08\x00\x00\x01" + VNI.to_bytes(3, "big") + b"\x00"),  # a reserved bit
    st.just(b"\x00" * 8),  # I flag clear
    # VXLAN-GBP: a group (with D: not to be learned from, or A), reserved bits for non-GBP
    st.sampled_from(VNIS).map(lambda v: b"\x88\x40\x00\x10" + v.to_bytes(3, "big") + b"\x00"),
    st.sampled_from(VNIS).map(lambda v: b"\x88\x08\x12\x34" + v.to_bytes(3, "big") + b"\x00"),
    st.just(b"\x08\x40\x00\x10" + VNI3.to_bytes(3, "big") + b"\x00"),  # GBP bits without G
)
RX_ITEMS = st.tuples(
    st.sampled_from(REMOTES),
    HEADERS,
    st.sampled_from([*MACS, *MACS, LOCAL, BCAST, ZERO_MAC]),
    st.sampled_from([False, False, False, True]),
).map(lambda t: (t[0], t[1] + frame(LOCAL, t[2], vlan=t[3])))
REMOTE_SPECS = st.tuples(
    st.sampled_from(REMOTES), st.sampled_from([None, 8472]), st.sampled_from([None, VNI2, 99])
)
OPS = st.one_of(
    st.tuples(st.just("tx"), st.sampled_from(VNIS), st.lists(TX_FRAMES, min_size=1, max_size=6)),
    st.tuples(st.just("rx"), st.lists(RX_ITEMS, min_size=1, max_size=6)),
    st.tuples(st.just("rx-again")),  # the last rx batch once more: learned MACs are hits now
    st.tuples(
        st.sampled_from(["add", "replace", "append", "del"]),
        st.sampled_from(VNIS),
        st.sampled_from([*MACS, ZERO_MAC]),
        REMOTE_SPECS,
    ),
    st.tuples(
        st.sampled_from(["neigh-add", "neigh-del"]),
        st.sampled_from(IPS + IPS6),
        st.sampled_from(MACS),
    ),
    st.tuples(st.just("wait"), st.floats(0.1, 40.0)),
    st.tuples(
        st.sampled_from(["learning", "proxy", "allow_vlan"]),
        st.sampled_from(VNIS),
        st.booleans(),
    ),
    st.tuples(st.just("strict"), st.booleans()),
    st.tuples(
        st.just("allow"),
        st.sampled_from(VNIS),
        st.sampled_from([None, ["198.18.0.2/32"], CONFIGURED, ["198.18.0.0/24", CONFIGURED]]),
    ),
)


def apply(e: Engine, op: tuple[Any, ...], now: float, fast: bool) -> Any:
    kind = op[0]
    if kind == "tx":
        return tx(e, op[1], op[2], now, fast)
    if kind == "rx":
        return rx(e, op[1], now, fast) if op[1] else None
    if kind in ("learning", "proxy", "allow_vlan"):
        seg = e.segment(op[1])
        setattr(seg.fdb if kind == "learning" else seg, kind, op[2])
        return None
    if kind == "strict":
        e.strict = op[1]
        return None
    if kind == "wait":
        return None
    if kind == "allow":
        e.segment(op[1]).allow = None if op[2] is None else Allowlist(op[2])
        return None
    if kind.startswith("neigh"):
        table = e.segment(VNI2).neigh
        try:
            table.add(op[1], op[2]) if kind == "neigh-add" else table.delete(op[1])
        except (NeighExists, NeighNotFound) as exc:
            return type(exc).__name__
        return "ok"
    fdb = e.segment(op[1]).fdb
    ip, port, vni = op[3]
    try:
        r = Remote.make(ip, port, vni)
        if kind == "del":
            fdb.delete(op[2], r)
        else:
            getattr(fdb, kind)(op[2], r)
    except FdbError as exc:
        return type(exc).__name__
    return "ok"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=st.lists(OPS, max_size=40),
    ageing=st.sampled_from([0.0, 30.0, 300.0]),
    limit=st.sampled_from([0, 3]),
    gbp=st.booleans(),
)
def test_fast_and_slow_path_agree(
    history: list[tuple[Any, ...]], ageing: float, limit: int, gbp: bool
) -> None:
    fast = make_engine(True, ageing, limit, gbp=gbp)
    slow = make_engine(False, ageing, limit, gbp=gbp)
    now = 1000.0
    last_rx: list[tuple[str, bytes]] = []
    for op in history:
        if op[0] == "rx":
            last_rx = op[1]
        elif op[0] == "rx-again":
            op = ("rx", last_rx)
        results = [apply(e, op, now, is_fast) for e, is_fast in ((fast, True), (slow, False))]
        if op[0] == "wait":
            now += op[1]
            for e in (fast, slow):
                e.handle_timer(now)
        assert results[0] == results[1], op
        assert list(fast.events()) == list(slow.events()), op
        fast.sync_datapath()
        mirror_agrees(fast)
    for vni in VNIS:
        st_fast, st_slow = stats.segment_stats(fast, vni), stats.segment_stats(slow, vni)
        assert st_fast == st_slow, vni
    assert fast.counters.to_dict() == slow.counters.to_dict()


def test_hits_stay_in_c() -> None:
    """A learned MAC is forwarded by C both ways after the first frame: no upcall, and the
    refresh seen only by C keeps the entry from ageing out."""
    e = make_engine(True, 30.0)
    dp = e.datapath
    assert dp is not None
    peer = bytes([2, 0, 0, 0, 0, 0x0B])
    rx(e, [(REMOTES[2], encode_header(VNI) + frame(LOCAL, peer))], 100.0, True)  # learned
    assert [type(ev).__name__ for ev in e.events()] == ["MacLearned"]
    b = FrameBatch(4, 256)
    for k in range(3):
        b.append_payload(encode_header(VNI) + frame(LOCAL, peer, k))
        set_source(b, k, REMOTES[2])
    e.sync_datapath()
    assert dp.rx_classify(b, 125.0) == 3  # delivered by C, refreshed at t=125
    t = FrameBatch(4, 256)
    t.append_frame(frame(peer, LOCAL), VNI)
    assert dp.tx_classify(VNI, t) == 1
    assert dp.targets(t.action[0]) == (Target(REMOTES[2], 4789, VNI),)
    e.handle_timer(131.0)  # due at 130 by the FDB's own time, but C saw it at 125
    assert e.segment(VNI).fdb.lookup(peer) is not None
    e.handle_timer(156.0)
    assert e.segment(VNI).fdb.lookup(peer) is None
    e.sync_datapath()
    assert dp.get(VNI, peer) is None
    assert dp.tx_classify(VNI, t) == 0  # unknown again: upcall (an L2 miss, then a flood)


def test_floods_and_overrides_are_done_in_c() -> None:
    """A broadcast takes the flood action in C; a static entry with a port and VNI override is
    encapsulated in C with the override; an ARP request goes up when the segment proxies."""
    e = make_engine(True, 300.0)
    dp = e.datapath
    assert dp is not None
    e.segment(VNI).fdb.add(MACS[1], Remote.make(REMOTES[2], 8472, 99))
    e.sync_datapath()
    b = FrameBatch(4, 256)
    b.append_frame(frame(BCAST, MACS[0]), VNI)
    b.append_frame(frame(MACS[1], MACS[0]), VNI)
    b.append_frame(arp_request(MACS[0], IPS[0]), VNI2)
    assert dp.tx_classify(VNI, b) == 3  # the ARP frame too: VNI 42 does not proxy
    assert dp.targets(b.action[0]) == tuple(Target(r, 4789, VNI) for r in REMOTES[:2])
    assert dp.targets(b.action[1]) == (Target(REMOTES[2], 8472, 99),)
    assert b.payload(1)[4:7] == (99).to_bytes(3, "big")
    b2 = FrameBatch(2, 256)
    b2.append_frame(arp_request(MACS[0], IPS[0]), VNI2)
    assert dp.tx_classify(VNI2, b2) == 0 and b2.action[0] == Verdict.UPCALL
    e.forward_frames(VNI, b, 1.0)
    sent = e.datagrams_to_send()
    assert [(d.host, d.port, d.vni) for d in sent[:3]] == [
        (REMOTES[0], 4789, VNI),
        (REMOTES[1], 4789, VNI),
        (REMOTES[2], 8472, 99),
    ]
    assert e.segment(VNI).counters.floods >= 1


def test_moves_and_spoofs_go_up() -> None:
    e = make_engine(True, 300.0)
    dp = e.datapath
    assert dp is not None
    peer = bytes([2, 0, 0, 0, 0, 0x0C])
    rx(e, [(REMOTES[0], encode_header(VNI) + frame(LOCAL, peer))], 1.0, True)
    e.sync_datapath()
    b = FrameBatch(2, 256)
    b.append_payload(encode_header(VNI) + frame(LOCAL, peer))
    set_source(b, 0, REMOTES[1])
    assert dp.rx_classify(b, 2.0) == 0 and b.action[0] == Verdict.UPCALL
    e.segment(VNI).fdb.replace(peer, Remote.make(REMOTES[2]))  # static now
    e.sync_datapath()
    entry = dp.get(VNI, peer)
    assert entry is not None
    assert entry.targets == (Target(REMOTES[2], 4789, VNI),) and entry.static
    assert entry.flags & EntryFlag.DELIVER and not entry.flags & EntryFlag.REFRESH
    assert dp.rx_classify(b, 3.0) == 0  # a static MAC from another VTEP: the engine drops it
    set_source(b, 0, REMOTES[2])
    assert dp.rx_classify(b, 3.0) == 1


def test_learning_off_delivers_unknown_sources_in_c() -> None:
    e = make_engine(True, 300.0)
    dp = e.datapath
    assert dp is not None
    e.segment(VNI).fdb.learning = False
    e.sync_datapath()
    b = FrameBatch(2, 256)
    b.append_payload(encode_header(VNI) + frame(LOCAL, MACS[4]))
    set_source(b, 0, REMOTES[1])
    assert dp.rx_classify(b, 1.0) == 1  # nothing to learn: C delivers it
    b.clear()
    b.append_payload(encode_header(VNI) + frame(LOCAL, LOCAL))
    set_source(b, 0, REMOTES[1])
    assert dp.rx_classify(b, 1.0) == 0  # the device's own MAC: up (the engine drops: looped)


def test_counters_and_segments() -> None:
    e = make_engine(True, 300.0)
    dp = e.datapath
    assert dp is not None
    assert dp.segment_counters(VNI)["rx_packets"] == 0
    e.segment(VNI).fdb.add(MACS[1], Remote.make(REMOTES[0]))
    b = FrameBatch(2, 256)
    b.append_payload(encode_header(VNI) + frame(LOCAL, MACS[1]))
    set_source(b, 0, REMOTES[0])
    e.forward_datagrams(b, 1.0)
    assert dp.segment_counters(VNI)["rx_packets"] == 1
    assert stats.segment_stats(e, VNI)["rx_packets"] == 1
    b.append_payload(encode_header(UNKNOWN_VNI) + frame(LOCAL, MACS[1]))
    set_source(b, 1, REMOTES[0])
    e.forward_datagrams(b, 1.0)
    assert e.counters.drops  # the engine recorded why (upcall)
    actions = dp.action_count
    e.remove_segment(VNI)
    assert dp.dump(VNI) == {}
    assert dp.action_count < actions  # the segment's actions went with it


def test_actions_are_shared_and_released() -> None:
    """Entries with the same targets share one action; ids come back when the last goes."""
    e = make_engine(True, 300.0)
    dp = e.datapath
    assert dp is not None
    e.sync_datapath()
    base = (dp.action_count, dp.remote_count)
    for m in MACS[1:4]:
        e.segment(VNI).fdb.add(m, Remote.make("198.18.0.9"))
    e.sync_datapath()
    assert dp.action_count == base[0] + 1 and dp.remote_count == base[1] + 1
    for m in MACS[1:4]:
        e.segment(VNI).fdb.delete(m)
    e.sync_datapath()
    assert (dp.action_count, dp.remote_count) == base


def test_replaced_fdb_leaves_nothing_behind() -> None:
    """An FDB object swapped for a new one is installed afresh: no entry of the old survives."""
    e = make_engine(True, 300.0)
    dp = e.datapath
    assert dp is not None
    seg = e.segment(VNI)
    seg.fdb.add(MACS[2], Remote.make("198.18.0.9"))
    e.sync_datapath()
    assert dp.get(VNI, MACS[2]) is not None
    seg.fdb = type(seg.fdb)()
    e.sync_datapath()
    assert set(dp.dump(VNI)) == {LOCAL}


def test_failed_push_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    e = make_engine(True, 300.0)
    dp = e.datapath
    assert dp is not None
    e.sync_datapath()
    e.segment(VNI).fdb.add(MACS[3], Remote.make(REMOTES[0]))

    def boom(*_a: object) -> None:
        raise MemoryError("full")

    monkeypatch.setattr(dp, "put", boom)
    with pytest.raises(MemoryError):
        e.sync_datapath()
    monkeypatch.undo()
    e.sync_datapath()
    assert isinstance(dp.get(VNI, MACS[3]), Entry)


def test_settings_reach_c() -> None:
    """The engine's settings are installed when they change, not copied once."""
    e = make_engine(True, 300.0)
    dp = e.datapath
    assert dp is not None
    b = FrameBatch(2, 256)
    b.append_payload(b"\x08\x00\x00\x01" + VNI.to_bytes(3, "big") + b"\x00" + frame(LOCAL, LOCAL))
    set_source(b, 0, REMOTES[0])
    e.sync_datapath()
    dp.rx_classify(b, 1.0)
    assert b.status[0] == 0
    e.strict = True
    e.sync_datapath()
    dp.rx_classify(b, 1.0)
    assert b.status[0] != 0
    e.srcport = (5000, 5000)
    e.sync_datapath()
    t = FrameBatch(2, 256)
    t.append_frame(frame(BCAST, MACS[0]), VNI)
    dp.tx_classify(VNI, t)
    assert t.sport[0] == 5000


def test_batches_past_the_c_limit_are_refused() -> None:
    e = make_engine(True, 300.0)
    dp = e.datapath
    assert dp is not None
    with pytest.raises(ValueError, match="at most"):
        dp.tx_classify(VNI, FrameBatch(MAX_BATCH + 1, 64))
