"""Unit tests of the FDB: ``bridge fdb`` admin semantics, learning, ageing and limits."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from vxlanpy.fdb import (
    Fdb,
    FdbEntry,
    FdbExists,
    FdbFull,
    FdbNotFound,
    LearnResult,
    Remote,
)
from vxlanpy.wire import VNI_MAX, ZERO_MAC


def mac(n: int) -> bytes:
    """A locally administered unicast MAC ending in ``n``."""
    return bytes((0x02, 0, 0, 0, n >> 8, n & 0xFF))


A, B, C, D = mac(1), mac(2), mac(3), mac(4)
IP1, IP2, IP3 = "192.0.2.1", "192.0.2.2", "2001:db8::3"
R1, R2, R3 = Remote.make(IP1), Remote.make(IP2), Remote.make(IP3)


# --- Remote ---------------------------------------------------------------------------------


class TestRemote:
    def test_make_normalises_the_address(self) -> None:
        assert Remote.make("2001:DB8:0:0::1").ip == "2001:db8::1"
        assert Remote.make("192.0.2.1", 4789, 42) == Remote("192.0.2.1", 4789, 42)

    def test_make_defaults_to_segment_port_and_vni(self) -> None:
        r = Remote.make(IP1)
        assert (r.port, r.vni) == (None, None)

    @pytest.mark.parametrize("ip", ["", "192.0.2", "192.0.2.256", "not-an-ip", "2001:db8::g"])
    def test_make_rejects_bad_addresses(self, ip: str) -> None:
        with pytest.raises(ValueError):
            Remote.make(ip)

    @pytest.mark.parametrize("port", [0, -1, 65536, True])
    def test_make_rejects_bad_ports(self, port: int) -> None:
        with pytest.raises(ValueError):
            Remote.make(IP1, port=port)

    @pytest.mark.parametrize("port", [1, 4789, 8472, 65535])
    def test_make_accepts_ports(self, port: int) -> None:
        assert Remote.make(IP1, port=port).port == port

    @pytest.mark.parametrize("vni", [-1, VNI_MAX + 1, True])
    def test_make_rejects_bad_vnis(self, vni: int) -> None:
        with pytest.raises(ValueError):
            Remote.make(IP1, vni=vni)

    @pytest.mark.parametrize("vni", [0, 42, VNI_MAX])
    def test_make_accepts_vnis(self, vni: int) -> None:
        assert Remote.make(IP1, vni=vni).vni == vni

    def test_remote_is_frozen_and_hashable(self) -> None:
        r = Remote.make(IP1, 4789)
        assert {r, Remote(IP1, 4789)} == {r}
        with pytest.raises(AttributeError):
            r.ip = IP2  # type: ignore[misc]

    def test_matches(self) -> None:
        r = Remote(IP1, 4789, 42)
        assert r.matches(Remote(IP1))
        assert r.matches(Remote(IP1, 4789))
        assert r.matches(Remote(IP1, vni=42))
        assert r.matches(Remote(IP1, 4789, 42))
        assert not r.matches(Remote(IP2))
        assert not r.matches(Remote(IP1, 8472))
        assert not r.matches(Remote(IP1, vni=43))
        assert not r.matches(Remote(IP1, 4789, 43))

    def test_matches_is_not_symmetric(self) -> None:
        # None in the *request* is a wildcard; None in the stored remote is a value like any other
        assert Remote(IP1, 4789).matches(Remote(IP1))
        assert not Remote(IP1).matches(Remote(IP1, 4789))


# --- construction -----------------------------------------------------------------------------


def test_defaults() -> None:
    fdb = Fdb()
    assert fdb.learning is True
    assert fdb.ageing == 300.0
    assert fdb.max_addresses == 0
    assert len(fdb) == fdb.address_count == fdb.learned_count == 0
    assert fdb.flood_list() == ()
    assert fdb.lookup(A) is None
    assert fdb.next_deadline() is None
    assert fdb.entries(0.0) == []


@pytest.mark.parametrize("kwargs", [{"ageing": -1}, {"max_addresses": -1}])
def test_constructor_rejects_negative_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Fdb(**kwargs)  # type: ignore[arg-type]


# --- add ------------------------------------------------------------------------------------


class TestAdd:
    def test_add_creates_a_static_entry(self) -> None:
        fdb = Fdb()
        fdb.add(A, R1)
        assert fdb.lookup(A) == (R1,)
        assert A in fdb
        assert fdb.static_items() == [(A, (R1,))]
        assert fdb.entries(5.0) == [FdbEntry(A, (R1,), True, None)]

    @pytest.mark.parametrize("remote", [R1, R2])
    def test_add_over_a_static_entry_raises(self, remote: Remote) -> None:
        fdb = Fdb()
        fdb.add(A, R1)
        with pytest.raises(FdbExists):
            fdb.add(A, remote)
        assert fdb.lookup(A) == (R1,)

    def test_add_over_a_learned_entry_makes_it_static(self) -> None:
        fdb = Fdb()
        assert fdb.learn(A, IP1, 1.0) == (LearnResult.NEW, None)
        fdb.add(A, R2)
        assert fdb.lookup(A) == (R2,)
        assert fdb.learned_count == 0
        assert fdb.learned_items() == []
        assert len(fdb) == fdb.address_count == 1
        assert fdb.entries(2.0) == [FdbEntry(A, (R2,), True, None)]
        # static now: it neither ages nor moves
        assert fdb.expire(10_000.0) == []
        assert fdb.learn(A, IP1, 3.0) == (LearnResult.SPOOFED, None)
        assert fdb.lookup(A) == (R2,)

    def test_add_flood_entry_twice_raises(self) -> None:
        fdb = Fdb()
        fdb.add(ZERO_MAC, R1)
        with pytest.raises(FdbExists):
            fdb.add(ZERO_MAC, R2)
        assert fdb.flood_list() == (R1,)


# --- append ---------------------------------------------------------------------------------


class TestAppend:
    def test_append_creates_a_missing_entry(self) -> None:
        fdb = Fdb()
        fdb.append(A, R1)
        assert fdb.lookup(A) == (R1,)
        assert fdb.static_items() == [(A, (R1,))]

    def test_append_adds_remotes_in_order(self) -> None:
        fdb = Fdb()
        fdb.add(A, R1)
        fdb.append(A, R2)
        fdb.append(A, R3)
        assert fdb.lookup(A) == (R1, R2, R3)

    def test_append_of_a_present_remote_is_a_no_op(self) -> None:
        fdb = Fdb()
        fdb.add(A, R1)
        fdb.append(A, R2)
        fdb.append(A, Remote.make(IP1))
        fdb.append(A, R2)
        assert fdb.lookup(A) == (R1, R2)

    def test_remotes_differing_in_port_or_vni_are_distinct(self) -> None:
        fdb = Fdb()
        fdb.append(A, R1)
        fdb.append(A, Remote.make(IP1, 8472))
        fdb.append(A, Remote.make(IP1, vni=7))
        assert fdb.lookup(A) == (R1, Remote(IP1, 8472), Remote(IP1, None, 7))

    def test_append_over_a_learned_entry_keeps_its_remote_and_makes_it_static(self) -> None:
        fdb = Fdb()
        fdb.learn(A, IP1, 1.0)
        fdb.append(A, R2)
        assert fdb.lookup(A) == (R1, R2)
        assert fdb.learned_count == 0
        assert fdb.static_items() == [(A, (R1, R2))]
        assert fdb.learn(A, IP1, 2.0) == (LearnResult.STATIC, None)
        assert fdb.learn(A, IP2, 2.0) == (LearnResult.STATIC, None)
        assert fdb.learn(A, IP3, 2.0) == (LearnResult.SPOOFED, None)

    def test_append_of_the_learned_remote_itself(self) -> None:
        fdb = Fdb()
        fdb.learn(A, IP1, 1.0)
        fdb.append(A, R1)
        assert fdb.lookup(A) == (R1,)
        assert fdb.static_items() == [(A, (R1,))]
        assert fdb.learned_count == 0


# --- replace --------------------------------------------------------------------------------


class TestReplace:
    def test_replace_sets_a_single_remote(self) -> None:
        fdb = Fdb()
        fdb.add(A, R1)
        fdb.append(A, R2)
        fdb.replace(A, R3)
        assert fdb.lookup(A) == (R3,)

    def test_replace_creates_a_missing_entry(self) -> None:
        fdb = Fdb()
        fdb.replace(A, R1)
        assert fdb.lookup(A) == (R1,)
        assert fdb.static_items() == [(A, (R1,))]

    def test_replace_over_a_learned_entry_makes_it_static(self) -> None:
        fdb = Fdb()
        fdb.learn(A, IP1, 1.0)
        fdb.replace(A, R2)
        assert fdb.lookup(A) == (R2,)
        assert fdb.learned_count == 0
        assert fdb.address_count == 1
        assert fdb.learn(A, IP1, 2.0) == (LearnResult.SPOOFED, None)

    def test_replace_flood_list(self) -> None:
        fdb = Fdb()
        fdb.append(ZERO_MAC, R1)
        fdb.append(ZERO_MAC, R2)
        fdb.replace(ZERO_MAC, R3)
        assert fdb.flood_list() == (R3,)


# --- delete ---------------------------------------------------------------------------------


class TestDelete:
    def test_delete_whole_static_entry(self) -> None:
        fdb = Fdb()
        fdb.add(A, R1)
        fdb.append(A, R2)
        fdb.delete(A)
        assert fdb.lookup(A) is None
        assert A not in fdb
        assert len(fdb) == 0

    def test_delete_one_remote_keeps_the_others(self) -> None:
        fdb = Fdb()
        for r in (R1, R2, R3):
            fdb.append(A, r)
        fdb.delete(A, R2)
        assert fdb.lookup(A) == (R1, R3)

    def test_delete_of_the_last_remote_removes_the_entry(self) -> None:
        fdb = Fdb()
        fdb.add(A, R1)
        fdb.delete(A, R1)
        assert fdb.lookup(A) is None
        assert len(fdb) == 0
        fdb.add(A, R2)  # no FdbExists: the entry is really gone
        assert fdb.lookup(A) == (R2,)

    def test_request_without_port_or_vni_matches_any(self) -> None:
        fdb = Fdb()
        fdb.append(A, Remote.make(IP1, 4789, 10))
        fdb.append(A, Remote.make(IP1, 8472, 20))
        fdb.append(A, R2)
        fdb.delete(A, Remote.make(IP1))  # both IP1 remotes go
        assert fdb.lookup(A) == (R2,)

    def test_request_with_port_matches_only_that_port(self) -> None:
        fdb = Fdb()
        fdb.append(A, Remote.make(IP1, 4789, 10))
        fdb.append(A, Remote.make(IP1, 8472, 10))
        fdb.delete(A, Remote.make(IP1, 8472))
        assert fdb.lookup(A) == (Remote(IP1, 4789, 10),)
        fdb.delete(A, Remote.make(IP1, vni=10))
        assert fdb.lookup(A) is None

    @pytest.mark.parametrize(
        "request_remote",
        [R2, Remote.make(IP1, 8472), Remote.make(IP1, vni=11), Remote.make(IP1, 4789, 11)],
    )
    def test_delete_of_a_missing_remote_raises(self, request_remote: Remote) -> None:
        fdb = Fdb()
        fdb.add(A, Remote.make(IP1, 4789, 10))
        with pytest.raises(FdbNotFound):
            fdb.delete(A, request_remote)
        assert fdb.lookup(A) == (Remote(IP1, 4789, 10),)

    def test_stored_remote_without_port_does_not_match_a_request_with_one(self) -> None:
        fdb = Fdb()
        fdb.add(A, R1)
        with pytest.raises(FdbNotFound):
            fdb.delete(A, Remote.make(IP1, 4789))
        assert fdb.lookup(A) == (R1,)

    def test_delete_of_a_missing_mac_raises(self) -> None:
        fdb = Fdb()
        fdb.add(A, R1)
        with pytest.raises(FdbNotFound):
            fdb.delete(B)
        with pytest.raises(FdbNotFound):
            fdb.delete(B, R1)
        with pytest.raises(FdbNotFound):
            fdb.delete(ZERO_MAC)

    def test_delete_learned_entry(self) -> None:
        fdb = Fdb()
        fdb.learn(A, IP1, 1.0)
        fdb.learn(B, IP1, 1.0)
        fdb.delete(A)
        assert fdb.lookup(A) is None
        with pytest.raises(FdbNotFound):
            fdb.delete(A)
        fdb.delete(B, Remote.make(IP1))
        assert fdb.lookup(B) is None
        assert len(fdb) == 0
        assert fdb.expire(1000.0) == []  # deleted entries are not reported as aged

    def test_delete_learned_entry_with_another_remote_raises(self) -> None:
        fdb = Fdb()
        fdb.learn(A, IP1, 1.0)
        for req in (R2, Remote.make(IP1, 4789), Remote.make(IP1, vni=5)):
            with pytest.raises(FdbNotFound):
                fdb.delete(A, req)
        assert fdb.lookup(A) == (R1,)


def test_flush() -> None:
    fdb = Fdb()
    fdb.add(A, R1)
    fdb.append(ZERO_MAC, R2)
    fdb.learn(B, IP1, 0.0)
    fdb.learn(C, IP3, 0.0)
    fdb.flush()
    assert fdb.learned_count == 0
    assert fdb.lookup(B) is None and fdb.lookup(C) is None
    assert fdb.lookup(A) == (R1,) and fdb.flood_list() == (R2,)
    assert fdb.expire(10_000.0) == []
    fdb.flush(static=True)
    assert len(fdb) == 0 and fdb.flood_list() == ()
    assert fdb._remotes.count(None) == len(fdb._remotes)  # learned remotes released


# --- flood list -----------------------------------------------------------------------------


class TestFloodList:
    def test_flood_list_is_the_all_zeros_entry(self) -> None:
        fdb = Fdb()
        group = Remote.make("239.1.1.1")
        fdb.append(ZERO_MAC, R1)
        fdb.append(ZERO_MAC, R2)
        fdb.append(ZERO_MAC, group)
        fdb.append(ZERO_MAC, R1)
        assert fdb.flood_list() == (R1, R2, group)
        assert fdb.lookup(ZERO_MAC) == (R1, R2, group)

    def test_flood_list_is_not_an_address(self) -> None:
        fdb = Fdb()
        fdb.append(ZERO_MAC, R1)
        assert len(fdb) == 1
        assert fdb.address_count == 0
        fdb.add(A, R1)
        assert len(fdb) == 2
        assert fdb.address_count == 1

    def test_deleting_flood_remotes(self) -> None:
        fdb = Fdb()
        fdb.append(ZERO_MAC, R1)
        fdb.append(ZERO_MAC, R2)
        fdb.delete(ZERO_MAC, R1)
        assert fdb.flood_list() == (R2,)
        fdb.delete(ZERO_MAC)
        assert fdb.flood_list() == ()

    def test_flood_list_is_listed_as_permanent(self) -> None:
        fdb = Fdb()
        fdb.append(ZERO_MAC, R1)
        assert fdb.entries(0.0) == [FdbEntry(ZERO_MAC, (R1,), True, None)]


# --- learning -------------------------------------------------------------------------------


class TestLearn:
    def test_new(self) -> None:
        fdb = Fdb()
        assert fdb.learn(A, IP1, 10.0) == (LearnResult.NEW, None)
        assert fdb.lookup(A) == (Remote(IP1),)
        assert fdb.learned_items() == [(A, IP1, 10.0)]
        assert fdb.learned_count == fdb.address_count == len(fdb) == 1

    def test_refreshed(self) -> None:
        fdb = Fdb()
        fdb.learn(A, IP1, 10.0)
        assert fdb.learn(A, IP1, 12.5) == (LearnResult.REFRESHED, None)
        assert fdb.learned_items() == [(A, IP1, 12.5)]
        assert fdb.learned_count == 1

    def test_moved(self) -> None:
        fdb = Fdb()
        fdb.learn(A, IP1, 10.0)
        assert fdb.learn(A, IP3, 11.0) == (LearnResult.MOVED, IP1)
        assert fdb.lookup(A) == (Remote(IP3),)
        assert fdb.learned_items() == [(A, IP3, 11.0)]
        assert fdb.learned_count == 1
        assert IP1 not in fdb._rid  # the old remote is released

    def test_static_from_its_own_vtep(self) -> None:
        fdb = Fdb()
        fdb.add(A, Remote.make(IP1, 8472, 7))
        fdb.append(A, R2)
        assert fdb.learn(A, IP1, 1.0) == (LearnResult.STATIC, None)
        assert fdb.learn(A, IP2, 1.0) == (LearnResult.STATIC, None)
        assert fdb.learned_count == 0
        assert fdb.lookup(A) == (Remote(IP1, 8472, 7), R2)

    def test_spoofed_static(self) -> None:
        fdb = Fdb()
        fdb.add(A, R1)
        assert fdb.learn(A, IP2, 1.0) == (LearnResult.SPOOFED, None)
        assert fdb.lookup(A) == (R1,)
        assert fdb.learned_count == 0

    def test_static_wins_over_disabled_learning(self) -> None:
        fdb = Fdb(learning=False)
        fdb.add(A, R1)
        assert fdb.learn(A, IP1, 1.0) == (LearnResult.STATIC, None)
        assert fdb.learn(A, IP2, 1.0) == (LearnResult.SPOOFED, None)

    def test_disabled(self) -> None:
        fdb = Fdb(learning=False)
        assert fdb.learn(A, IP1, 1.0) == (LearnResult.DISABLED, None)
        assert fdb.lookup(A) is None
        assert len(fdb) == 0

    def test_disabled_does_not_refresh_or_move(self) -> None:
        fdb = Fdb(ageing=10)
        fdb.learn(A, IP1, 0.0)
        fdb.learning = False
        assert fdb.learn(A, IP1, 5.0) == (LearnResult.DISABLED, None)
        assert fdb.learn(A, IP2, 5.0) == (LearnResult.DISABLED, None)
        assert fdb.learned_items() == [(A, IP1, 0.0)]
        assert fdb.expire(10.0) == [(A, Remote(IP1))]
        fdb.learning = True
        assert fdb.learn(A, IP2, 11.0) == (LearnResult.NEW, None)

    def test_refused_when_full(self) -> None:
        fdb = Fdb(max_addresses=2)
        assert fdb.learn(A, IP1, 0.0)[0] is LearnResult.NEW
        assert fdb.learn(B, IP1, 0.0)[0] is LearnResult.NEW
        assert fdb.learn(C, IP1, 0.0) == (LearnResult.REFUSED, None)
        assert fdb.lookup(C) is None
        # known MACs are still refreshed and moved when full
        assert fdb.learn(A, IP1, 1.0) == (LearnResult.REFRESHED, None)
        assert fdb.learn(B, IP2, 1.0) == (LearnResult.MOVED, IP1)
        fdb.delete(A)
        assert fdb.learn(C, IP1, 2.0) == (LearnResult.NEW, None)

    def test_learn_time_is_stored_in_exact_milliseconds(self) -> None:
        # 1.001 * 1000 == 1000.9999999999999: truncating would store 1000 ms
        fdb = Fdb(ageing=1)
        fdb.learn(A, IP1, 1.001)
        fdb.learn(B, IP1, 2.003)
        assert sorted(fdb.learned_items()) == [(A, IP1, 1.001), (B, IP1, 2.003)]
        assert fdb.expire(2.0) == []  # A's deadline is 2.001 s
        assert fdb.lookup(A) == (R1,)
        assert fdb.expire(3.0) == [(A, R1)]

    def test_learned_ipv6_remote(self) -> None:
        fdb = Fdb()
        fdb.learn(A, IP3, 0.0)
        assert fdb.lookup(A) == (R3,)


# --- ageing ---------------------------------------------------------------------------------


class TestAgeing:
    def test_entry_is_gone_at_last_seen_plus_ageing(self) -> None:
        fdb = Fdb(ageing=300)
        fdb.learn(A, IP1, 10.0)
        assert fdb.next_deadline() == 310.0
        assert fdb.expire(309.0) == []
        assert fdb.expire(309.999) == []
        assert fdb.lookup(A) == (R1,)
        assert fdb.expire(310.0) == [(A, R1)]
        assert fdb.lookup(A) is None
        assert len(fdb) == 0
        assert fdb.expire(310.0) == []

    def test_never_before_the_deadline_with_fractional_times(self) -> None:
        fdb = Fdb(ageing=2.5)
        fdb.learn(A, IP1, 0.3)  # deadline 2.8 s, filed under second 3
        assert fdb.next_deadline() == 3.0
        assert fdb.expire(2.0) == []
        assert fdb.expire(2.799) == []
        assert fdb.expire(3.0) == [(A, R1)]

    def test_refreshed_entries_survive(self) -> None:
        fdb = Fdb(ageing=300)
        fdb.learn(A, IP1, 0.0)
        fdb.learn(B, IP1, 0.0)
        assert fdb.learn(A, IP1, 200.0)[0] is LearnResult.REFRESHED
        assert fdb.expire(300.0) == [(B, R1)]
        assert fdb.lookup(A) == (R1,)
        assert fdb.next_deadline() == 500.0
        assert fdb.expire(499.0) == []
        assert fdb.expire(500.0) == [(A, R1)]

    def test_moved_entries_are_refreshed(self) -> None:
        fdb = Fdb(ageing=10)
        fdb.learn(A, IP1, 0.0)
        fdb.learn(A, IP2, 5.0)
        assert fdb.expire(10.0) == []
        assert fdb.expire(15.0) == [(A, R2)]

    def test_ageing_zero_never_ages(self) -> None:
        fdb = Fdb(ageing=0)
        fdb.learn(A, IP1, 0.0)
        assert fdb.next_deadline() is None
        assert fdb.expire(1e9) == []
        assert fdb.lookup(A) == (R1,)

    def test_static_entries_never_age(self) -> None:
        fdb = Fdb(ageing=1)
        fdb.add(A, R1)
        fdb.append(ZERO_MAC, R2)
        assert fdb.next_deadline() is None
        assert fdb.expire(1e6) == []
        assert fdb.lookup(A) == (R1,)

    def test_expire_returns_each_aged_entry_once(self) -> None:
        fdb = Fdb(ageing=10)
        for i in range(5):
            fdb.learn(mac(i + 1), IP1, float(i))
        assert sorted(fdb.expire(12.0)) == [(mac(1), R1), (mac(2), R1), (mac(3), R1)]
        assert sorted(fdb.expire(100.0)) == [(mac(4), R1), (mac(5), R1)]
        assert fdb.expire(1000.0) == []

    def test_relearned_after_delete(self) -> None:
        # the wheel still holds the old filing: it must not expire the new entry early
        fdb = Fdb(ageing=10)
        fdb.learn(A, IP1, 0.0)
        fdb.delete(A)
        fdb.learn(A, IP2, 5.0)
        assert fdb.expire(10.0) == []
        assert fdb.lookup(A) == (R2,)
        assert fdb.expire(15.0) == [(A, R2)]

    def test_set_ageing_shorter_refiles_entries(self) -> None:
        fdb = Fdb(ageing=300)
        fdb.learn(A, IP1, 0.0)
        fdb.learn(B, IP1, 8.0)
        fdb.set_ageing(10, now=5.0)
        assert fdb.ageing == 10.0
        assert fdb.next_deadline() == 10.0
        assert fdb.expire(10.0) == [(A, R1)]
        assert fdb.expire(18.0) == [(B, R1)]

    def test_set_ageing_longer_refiles_entries(self) -> None:
        fdb = Fdb(ageing=10)
        fdb.learn(A, IP1, 0.0)
        fdb.set_ageing(100, now=5.0)
        assert fdb.expire(10.0) == []
        assert fdb.expire(99.0) == []
        assert fdb.expire(100.0) == [(A, R1)]

    def test_set_ageing_zero_and_back(self) -> None:
        fdb = Fdb(ageing=10)
        fdb.learn(A, IP1, 0.0)
        fdb.set_ageing(0, now=1.0)
        assert fdb.next_deadline() is None
        assert fdb.expire(1000.0) == []
        fdb.set_ageing(20, now=1000.0)
        assert fdb.next_deadline() == 20.0
        assert fdb.expire(1000.0) == [(A, R1)]

    def test_learned_with_ageing_zero_ages_after_set_ageing(self) -> None:
        fdb = Fdb(ageing=0)
        fdb.learn(A, IP1, 3.0)
        fdb.set_ageing(5, now=4.0)
        assert fdb.expire(7.0) == []
        assert fdb.expire(8.0) == [(A, R1)]

    def test_set_ageing_rejects_negative(self) -> None:
        fdb = Fdb()
        with pytest.raises(ValueError):
            fdb.set_ageing(-1, now=0.0)
        assert fdb.ageing == 300.0

    @given(
        learn_ms=st.integers(0, 10**7),
        ageing_ms=st.integers(1, 10**6),
        now_ms=st.integers(0, 2 * 10**7),
    )
    @example(learn_ms=1001, ageing_ms=1000, now_ms=2000)  # 1.001 s must not be stored as 1000 ms
    def test_expiry_respects_the_deadline(self, learn_ms: int, ageing_ms: int, now_ms: int) -> None:
        """Never before last_seen + ageing; always once the deadline's whole second has come."""
        fdb = Fdb(ageing=ageing_ms / 1000)
        fdb.learn(A, IP1, learn_ms / 1000)
        deadline_ms = learn_ms + ageing_ms
        gone = fdb.expire(now_ms / 1000) == [(A, R1)]
        if now_ms < deadline_ms:
            assert not gone
        if now_ms >= -(-deadline_ms // 1000) * 1000:
            assert gone
        if now_ms % 1000 == 0:
            assert gone == (now_ms >= deadline_ms)


# --- max_addresses --------------------------------------------------------------------------


class TestMaxAddresses:
    def test_counts_static_and_learned_but_not_the_flood_list(self) -> None:
        fdb = Fdb(max_addresses=2)
        fdb.append(ZERO_MAC, R1)
        fdb.add(A, R1)
        assert fdb.learn(B, IP2, 0.0)[0] is LearnResult.NEW
        assert fdb.address_count == 2
        assert len(fdb) == 3
        assert fdb.learn(C, IP2, 0.0)[0] is LearnResult.REFUSED
        # the flood list can still grow
        fdb.append(ZERO_MAC, R2)
        fdb.delete(ZERO_MAC)
        fdb.replace(ZERO_MAC, R3)
        assert fdb.flood_list() == (R3,)

    def test_static_add_past_the_limit_raises(self) -> None:
        fdb = Fdb(max_addresses=2)
        fdb.add(A, R1)
        fdb.learn(B, IP1, 0.0)
        with pytest.raises(FdbFull):
            fdb.add(C, R1)
        with pytest.raises(FdbFull):
            fdb.append(C, R1)
        with pytest.raises(FdbFull):
            fdb.replace(C, R1)
        assert fdb.lookup(C) is None
        assert fdb.address_count == 2

    def test_changes_to_existing_entries_are_allowed_when_full(self) -> None:
        fdb = Fdb(max_addresses=2)
        fdb.add(A, R1)
        fdb.learn(B, IP1, 0.0)
        fdb.append(A, R2)
        fdb.replace(A, R3)
        fdb.add(B, R2)  # learned -> static: the count does not change
        assert fdb.address_count == 2
        fdb.delete(B)
        fdb.learn(B, IP1, 0.0)
        fdb.append(B, R2)
        fdb.delete(B)
        fdb.learn(B, IP1, 0.0)
        fdb.replace(B, R3)
        assert fdb.lookup(B) == (R3,)
        assert fdb.address_count == 2

    def test_deleting_frees_room(self) -> None:
        fdb = Fdb(max_addresses=1)
        fdb.add(A, R1)
        with pytest.raises(FdbFull):
            fdb.add(B, R1)
        fdb.delete(A)
        fdb.add(B, R1)
        assert fdb.lookup(B) == (R1,)

    def test_ageing_frees_room(self) -> None:
        fdb = Fdb(max_addresses=1, ageing=10)
        fdb.learn(A, IP1, 0.0)
        assert fdb.learn(B, IP1, 1.0)[0] is LearnResult.REFUSED
        fdb.expire(10.0)
        assert fdb.learn(B, IP1, 11.0)[0] is LearnResult.NEW

    def test_zero_means_no_limit(self) -> None:
        fdb = Fdb(max_addresses=0)
        for i in range(1, 1001):
            assert fdb.learn(mac(i), IP1, 0.0)[0] is LearnResult.NEW
        assert fdb.address_count == 1000


# --- next_deadline and listing --------------------------------------------------------------


def test_next_deadline() -> None:
    fdb = Fdb(ageing=300)
    assert fdb.next_deadline() is None
    fdb.learn(A, IP1, 10.2)
    assert fdb.next_deadline() == 311.0
    fdb.learn(B, IP1, 5.0)
    assert fdb.next_deadline() == 305.0
    assert fdb.expire(305.0) == [(B, R1)]
    assert fdb.next_deadline() == 311.0
    assert fdb.expire(311.0) == [(A, R1)]
    assert fdb.next_deadline() is None


def test_next_deadline_may_be_early_but_never_late() -> None:
    fdb = Fdb(ageing=300)
    fdb.learn(A, IP1, 0.0)
    fdb.learn(A, IP1, 100.0)
    nd = fdb.next_deadline()
    assert nd is not None and nd <= 400.0
    assert fdb.expire(nd) == []  # nothing there yet: the entry is re-filed
    assert fdb.next_deadline() == 400.0
    assert fdb.expire(400.0) == [(A, R1)]


def test_entries_lists_static_first_then_learned_with_ages() -> None:
    fdb = Fdb()
    fdb.learn(C, IP3, 10.0)
    fdb.add(A, R1)
    fdb.append(ZERO_MAC, R2)
    fdb.learn(D, IP1, 12.5)
    got = fdb.entries(20.0)
    assert got[:2] == [FdbEntry(A, (R1,), True, None), FdbEntry(ZERO_MAC, (R2,), True, None)]
    assert got[2:] == [FdbEntry(C, (R3,), False, 10.0), FdbEntry(D, (R1,), False, 7.5)]
    # a clock behind the last-seen time gives age 0, not a negative one
    assert [e.age for e in fdb.entries(11.0)[2:]] == [1.0, 0.0]


def test_entry_str() -> None:
    assert str(FdbEntry(A, (R1, R2), True, None)) == (
        "02:00:00:00:00:01 -> 192.0.2.1, 192.0.2.2 permanent"
    )
    assert str(FdbEntry(A, (R1,), False, 12.4)) == "02:00:00:00:00:01 -> 192.0.2.1 age 12s"


# --- interned remotes -----------------------------------------------------------------------


def test_remote_refcounts_follow_learned_entries() -> None:
    fdb = Fdb()
    fdb.learn(A, IP1, 0.0)
    fdb.learn(B, IP1, 0.0)
    assert fdb._refs[fdb._rid[IP1]] == 2
    fdb.learn(A, IP2, 1.0)  # moved
    assert fdb._refs[fdb._rid[IP1]] == 1
    assert fdb._refs[fdb._rid[IP2]] == 1
    fdb.add(B, R3)  # learned -> static releases its remote
    assert IP1 not in fdb._rid
    fdb.delete(A)
    assert fdb._rid == {}
    assert len(fdb._free) == len(fdb._remotes)


def test_interned_remotes_do_not_grow_when_macs_churn_across_ips() -> None:
    fdb = Fdb(ageing=10)
    now = 0.0
    for round_ in range(50):
        for i in range(20):
            # every round uses 20 fresh IPs and moves/relearns the same MACs
            ip = f"10.{round_}.{i}.1"
            fdb.learn(mac(i + 1), ip, now)
        now += 11.0
        if round_ % 2:
            assert len(fdb.expire(now)) == 20
        else:
            fdb.learn(mac(100), f"10.{round_}.0.2", now)
            fdb.delete(mac(100))
    # at most ~20 live remotes at a time: the slots are reused, not appended forever
    assert len(fdb._remotes) <= 21
    assert len(fdb._rid) == len({ip for _, ip, _ in fdb.learned_items()})
    assert len(fdb._remotes) == len(fdb._refs) == len(fdb._remote_tuple)


def test_lookup_of_learned_entry_returns_a_shared_tuple() -> None:
    fdb = Fdb()
    fdb.learn(A, IP1, 0.0)
    fdb.learn(B, IP1, 0.0)
    assert fdb.lookup(A) is fdb.lookup(B)
