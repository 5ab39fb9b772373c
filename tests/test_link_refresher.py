"""io/tgso.py's LinkRefresher rounds, against stand-ins for the datapath and the TAP: which
remotes a round looks up (those without a link every round, those behind a neighbour that
changed, all of them in a sweep)."""

from __future__ import annotations

from typing import Any

from vxlanpy.io.tgso import LinkRefresher

LINK = (b"\x02" * 6, b"\x04" * 6, b"\xc6\x12\x00\x01")


class _Dp:
    def __init__(self, n: int) -> None:
        self.rows = [(rid, f"198.18.1.{rid}", 4789) for rid in range(1, n + 1)]
        self.links: dict[int, Any] = {}

    def remotes(self) -> list[tuple[int, str, int]]:
        return self.rows

    def set_remote_link(self, rid: int, link: Any) -> None:
        self.links[rid] = link


def _refresher(n: int, budget: int = 64, sweep_every: int = 4) -> tuple[LinkRefresher, _Dp]:
    dp = _Dp(n)
    r = LinkRefresher(None, dp, budget=budget, sweep_every=sweep_every)  # type: ignore[arg-type]
    return r, dp


def _round(r: LinkRefresher, resolved: set[int]) -> list[int]:
    """One round as run() does it, ``resolved`` the remotes whose lookup finds a link."""
    batch = r._batch()
    r.refresh([(rid, LINK if rid in resolved else None) for rid, _ip in batch])
    return [rid for rid, _ip in batch]


def test_linked_remotes_wait_for_the_sweep() -> None:
    r, dp = _refresher(5)
    assert _round(r, {1, 2, 3}) == [1, 2, 3, 4, 5]  # the first round: every remote
    assert dp.links == {1: LINK, 2: LINK, 3: LINK} and set(r.linked) == {1, 2, 3}
    assert _round(r, {1, 2, 3}) == [4, 5]  # then only those without a link
    assert _round(r, {1, 2, 3, 4}) == [4, 5]
    assert set(r.linked) == {1, 2, 3, 4}
    assert sorted(_round(r, {1, 2, 3, 4})) == [1, 2, 3, 4, 5]  # round 4: a sweep
    assert _round(r, {1, 2, 3, 4}) == []  # 5 missed 4 rounds in a row: it waits for sweeps


def test_a_neighbour_change_looks_up_the_remotes_behind_it() -> None:
    r, dp = _refresher(4, sweep_every=100)
    gw = "198.18.0.254"
    batch = r._batch()  # 1 and 2 are reached through a gateway, 3 and 4 directly
    r.refresh([(rid, LINK) for rid, _ip in batch], {1: gw, 2: gw, 3: "198.18.1.3"})
    assert _round(r, {1, 2, 3, 4}) == []
    r._on_neigh(frozenset({"198.18.7.7", "198.18.1.9"}))  # other hosts on the underlay
    assert not r._wake.is_set() and _round(r, {1, 2, 3, 4}) == []  # no lookup for them
    r._on_neigh(frozenset({gw}))  # the gateway's entry changed: the remotes behind it
    assert r._wake.is_set() and _round(r, {1, 3, 4}) == [1, 2]
    assert set(r.linked) == {1, 3, 4} and dp.links[2] is None  # 2's next hop is not usable
    r._on_neigh(frozenset({"198.18.1.4"}))  # no hop known for 4: its own address is one
    assert sorted(_round(r, {1, 3, 4})) == [2, 4]  # (2, without a link, is tried every round)
    r._on_neigh(None)  # a notification that did not say which: every remote
    assert sorted(_round(r, {1, 2, 3, 4})) == [1, 2, 3, 4]


def test_a_route_change_relinks() -> None:
    r, dp = _refresher(3)
    _round(r, {1, 2, 3})
    assert _round(r, {1, 2, 3}) == []  # all linked: nothing to ask
    r._on_neigh(frozenset({"198.18.1.2"}))
    assert _round(r, {1, 3}) == [2]  # 2's next hop went: its link is taken
    assert set(r.linked) == {1, 3} and dp.links[2] is None
    r._on_route()  # every link away at once
    assert r.linked == {} and all(v is None for v in dp.links.values())
    assert sorted(_round(r, {1, 2, 3})) == [1, 2, 3]


def test_the_budget_turns_round_robin() -> None:
    r, _dp = _refresher(10, budget=4, sweep_every=100)
    seen = [_round(r, set()) for _ in range(3)]  # nothing resolves: never a link
    assert seen == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 1, 2]]
    assert _round(r, set()) == [3, 4, 5, 6]


def test_a_sweep_over_budget_goes_on_until_every_remote_is_seen() -> None:
    r, _dp = _refresher(10, budget=4, sweep_every=100)
    everyone = set(range(1, 11))
    # the first round's sweep takes three rounds of 4
    assert [_round(r, everyone) for _ in range(3)] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 1, 2]]
    assert _round(r, everyone) == []  # all linked: nothing until the next sweep
    r._on_neigh()
    swept = [_round(r, everyone) for _ in range(3)]  # the whole sweep again, in three rounds
    assert swept == [[3, 4, 5, 6], [7, 8, 9, 10], [1, 2, 3, 4]]
    assert _round(r, everyone) == []


def test_a_remote_that_stays_unresolved_waits_for_the_sweeps() -> None:
    r, _dp = _refresher(2, sweep_every=4)
    rounds = [_round(r, {1}) for _ in range(9)]  # 2 never resolves
    # 2 is tried in 4 rounds in a row (round 4 a sweep), then only in the sweeps (round 8)
    assert rounds == [[1, 2], [2], [2], [1, 2], [], [], [], [1, 2], []]
    r._on_route()  # a route change: every remote is tried every round again
    assert [_round(r, {1, 2}) for _ in range(2)] == [[1, 2], []]
