"""The FDB against a plain-dict model, driven by hypothesis on random operation sequences.

The model restates the rules of ``vxlanpy/fdb.py``'s docstring in the most naive way: a dict of
static remote lists, a dict of learned ``(ip, last_seen_ms)`` and a clock in integer
milliseconds (so every ``now`` the FDB sees is exactly ``ms / 1000`` and rounding never hides a
difference). A small pool of MACs and IPs makes collisions, moves and spoofs common.

Expiry is modelled by its contract, which is exact at whole seconds:

- an entry last seen at ``t`` ms with an ageing of ``A`` ms is never removed before
  ``now_ms >= t + A``;
- it is always removed by ``expire(now)`` once the whole second its deadline falls in has come,
  ``ceil((t + A) / 1000) <= now``;
- in between (only possible when ``now`` is not a whole second) it may go either way, depending
  on which ageing-wheel slot an earlier refresh left it under; the model then follows the FDB.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from vxlanpy.fdb import Fdb, FdbExists, FdbFull, FdbNotFound, LearnResult, Remote
from vxlanpy.wire import ZERO_MAC

UNICAST = [bytes((0x02, 0, 0, 0, 0, i)) for i in range(1, 6)]
MACS = [ZERO_MAC, *UNICAST]
IPS = ["192.0.2.1", "192.0.2.2", "2001:db8::1"]

macs = st.sampled_from(MACS)
unicast = st.sampled_from(UNICAST)
ips = st.sampled_from(IPS)
ports = st.sampled_from([None, 4789, 8472])
vnis = st.sampled_from([None, 42])
remotes = st.builds(Remote.make, ips, ports, vnis)
gaps = st.integers(0, 1500)  # ms between frames: several frames within one ageing time
AGEING_MS = st.sampled_from([1000, 2500, 5000, 0, 300_000])


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class FdbMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now_ms = 0

    @initialize(
        max_addresses=st.sampled_from([0, 1, 2, 3, 5]),
        ageing_ms=AGEING_MS,
        learning=st.sampled_from([True, False]),
    )
    def setup(self, max_addresses: int, ageing_ms: int, learning: bool) -> None:
        self.fdb = Fdb(learning=learning, ageing=ageing_ms / 1000, max_addresses=max_addresses)
        self.max_addresses = max_addresses
        self.ageing_ms = ageing_ms
        self.learning = learning
        self.static: dict[bytes, list[Remote]] = {}
        self.learned: dict[bytes, tuple[str, int]] = {}  # mac -> (ip, last seen in ms)

    # --- model helpers --------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.now_ms / 1000

    def model_count(self) -> int:
        return len(self.static) + len(self.learned) - (ZERO_MAC in self.static)

    def model_full(self) -> bool:
        return self.max_addresses > 0 and self.model_count() >= self.max_addresses

    def model_lookup(self, mac: bytes) -> tuple[Remote, ...] | None:
        if mac in self.static:
            return tuple(self.static[mac])
        if mac in self.learned:
            return (Remote(self.learned[mac][0]),)
        return None

    def expect_full(self, op: str, mac: bytes, remote: Remote) -> None:
        try:
            getattr(self.fdb, op)(mac, remote)
        except FdbFull:
            return
        raise AssertionError(f"{op} past max_addresses did not raise FdbFull")

    # --- admin rules ----------------------------------------------------------------------

    @rule(mac=macs, remote=remotes)
    def add(self, mac: bytes, remote: Remote) -> None:
        if mac in self.static:
            try:
                self.fdb.add(mac, remote)
            except FdbExists:
                return
            raise AssertionError("add over a static entry did not raise FdbExists")
        if mac in self.learned:
            del self.learned[mac]
        elif mac != ZERO_MAC and self.model_full():
            return self.expect_full("add", mac, remote)
        self.fdb.add(mac, remote)
        self.static[mac] = [remote]

    @rule(mac=macs, remote=remotes)
    def append(self, mac: bytes, remote: Remote) -> None:
        if mac in self.static:
            if remote not in self.static[mac]:
                self.static[mac].append(remote)
        elif mac in self.learned:
            old = Remote(self.learned.pop(mac)[0])
            self.static[mac] = ([old] if old != remote else []) + [remote]
        elif mac != ZERO_MAC and self.model_full():
            return self.expect_full("append", mac, remote)
        else:
            self.static[mac] = [remote]
        self.fdb.append(mac, remote)

    @rule(mac=macs, remote=remotes)
    def replace(self, mac: bytes, remote: Remote) -> None:
        if mac in self.learned:
            del self.learned[mac]
        elif mac not in self.static and mac != ZERO_MAC and self.model_full():
            return self.expect_full("replace", mac, remote)
        self.fdb.replace(mac, remote)
        self.static[mac] = [remote]

    @rule(mac=macs)
    def delete_entry(self, mac: bytes) -> None:
        if mac in self.static:
            del self.static[mac]
        elif mac in self.learned:
            del self.learned[mac]
        else:
            try:
                self.fdb.delete(mac)
            except FdbNotFound:
                return
            raise AssertionError("delete of a missing entry did not raise FdbNotFound")
        self.fdb.delete(mac)

    @rule(mac=macs, ip=ips, port=ports, vni=vnis)
    def delete_remote(self, mac: bytes, ip: str, port: int | None, vni: int | None) -> None:
        req = Remote(ip, port, vni)

        def hit(r: Remote) -> bool:  # a request's None port/VNI matches any
            return r.ip == ip and port in (None, r.port) and vni in (None, r.vni)

        found = False
        if mac in self.static:
            keep = [r for r in self.static[mac] if not hit(r)]
            found = len(keep) < len(self.static[mac])
            if keep:
                self.static[mac] = keep
            elif found:
                del self.static[mac]
        elif mac in self.learned:
            found = hit(Remote(self.learned[mac][0]))
            if found:
                del self.learned[mac]
        if found:
            self.fdb.delete(mac, req)
            return
        try:
            self.fdb.delete(mac, req)
        except FdbNotFound:
            return
        raise AssertionError("delete of a missing remote did not raise FdbNotFound")

    @rule(static=st.booleans())
    def flush(self, static: bool) -> None:
        self.fdb.flush(static=static)
        self.learned.clear()
        if static:
            self.static.clear()

    # --- learning, time and settings ------------------------------------------------------

    @rule(mac=unicast, ip=ips, gap=gaps)
    def learn(self, mac: bytes, ip: str, gap: int) -> None:
        self.now_ms += gap
        self.learn_now(mac, ip)

    @rule(frames=st.lists(st.tuples(unicast, ips, gaps), min_size=1, max_size=10))
    def learn_burst(self, frames: list[tuple[bytes, str, int]]) -> None:
        """Traffic: several frames, a few ms to a second apart (learning dominates the runs)."""
        for mac, ip, gap in frames:
            self.now_ms += gap
            self.learn_now(mac, ip)

    def learn_now(self, mac: bytes, ip: str) -> None:
        old: str | None = None
        if mac in self.static:
            hit = any(r.ip == ip for r in self.static[mac])
            want = LearnResult.STATIC if hit else LearnResult.SPOOFED
        elif not self.learning:
            want = LearnResult.DISABLED
        elif mac in self.learned:
            prev = self.learned[mac][0]
            want = LearnResult.REFRESHED if prev == ip else LearnResult.MOVED
            old = prev if prev != ip else None
            self.learned[mac] = (ip, self.now_ms)
        elif self.model_full():
            want = LearnResult.REFUSED
        else:
            want = LearnResult.NEW
            self.learned[mac] = (ip, self.now_ms)
        assert self.fdb.learn(mac, ip, self.now) == (want, old)

    @rule(learning=st.booleans())
    def set_learning(self, learning: bool) -> None:
        self.fdb.learning = self.learning = learning

    @rule(ageing_ms=AGEING_MS)
    def set_ageing(self, ageing_ms: int) -> None:
        self.fdb.set_ageing(ageing_ms / 1000, self.now)
        self.ageing_ms = ageing_ms

    @rule(ms=st.integers(0, 3000) | st.sampled_from([60_000, 300_000]))
    def advance(self, ms: int) -> None:
        self.now_ms += ms

    @rule()
    def advance_to_whole_second(self) -> None:
        self.now_ms = (self.now_ms // 1000 + 1) * 1000

    @rule(gap=st.integers(0, 3000))
    def expire(self, gap: int) -> None:
        self.now_ms += gap
        self.expire_now()

    def expire_now(self) -> None:
        got = self.fdb.expire(self.now)
        macs_out = [m for m, _ in got]
        assert len(macs_out) == len(set(macs_out)), "an entry was reported twice"
        if self.ageing_ms == 0:
            assert got == []
            return
        must = {
            m
            for m, (_, t) in self.learned.items()
            if ceil_div(t + self.ageing_ms, 1000) * 1000 <= self.now_ms
        }
        may = {m for m, (_, t) in self.learned.items() if t + self.ageing_ms <= self.now_ms}
        assert must <= set(macs_out) <= may, (must, macs_out, may)
        if self.now_ms % 1000 == 0:
            assert must == may  # at a whole second the contract is exact
        for m, remote in got:
            assert remote == Remote(self.learned[m][0])
            del self.learned[m]

    @precondition(lambda self: self.fdb.next_deadline() is not None)
    @rule()
    def expire_at_next_deadline(self) -> None:
        """What the driver does: sleep until next_deadline() and expire then."""
        nd = self.fdb.next_deadline()
        assert nd is not None and nd == int(nd)
        self.now_ms = max(self.now_ms, int(nd) * 1000)
        self.expire_now()

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def lookups_agree(self) -> None:
        for mac in MACS:
            assert self.fdb.lookup(mac) == self.model_lookup(mac), mac.hex(":")
            assert (mac in self.fdb) == (mac in self.static or mac in self.learned)

    @invariant()
    def flood_list_agrees(self) -> None:
        assert self.fdb.flood_list() == tuple(self.static.get(ZERO_MAC, ()))

    @invariant()
    def counts_agree(self) -> None:
        assert self.fdb.address_count == self.model_count()
        assert len(self.fdb) == len(self.static) + len(self.learned)
        assert self.fdb.learned_count == len(self.learned)
        if self.max_addresses:
            assert self.model_count() <= self.max_addresses

    @invariant()
    def items_agree(self) -> None:
        want = {(m, ip, t / 1000) for m, (ip, t) in self.learned.items()}
        got = self.fdb.learned_items()
        assert len(got) == len(want)
        assert set(got) == want
        assert dict(self.fdb.static_items()) == {m: tuple(rs) for m, rs in self.static.items()}

    @invariant()
    def entries_agree(self) -> None:
        ents = self.fdb.entries(self.now)
        n = len(self.static)
        assert all(e.permanent and e.age is None for e in ents[:n])
        assert {e.mac: e.remotes for e in ents[:n]} == {
            m: tuple(rs) for m, rs in self.static.items()
        }
        assert {e.mac: (e.remotes, e.age) for e in ents[n:]} == {
            m: ((Remote(ip),), max(0.0, self.now - t / 1000)) for m, (ip, t) in self.learned.items()
        }

    @invariant()
    def next_deadline_is_never_late(self) -> None:
        nd = self.fdb.next_deadline()
        if self.ageing_ms == 0:
            assert nd is None
        elif self.learned:
            first = min(ceil_div(t + self.ageing_ms, 1000) for _, t in self.learned.values())
            assert nd is not None and nd <= first

    @invariant()
    def interned_remotes_are_released(self) -> None:
        # white box: one interned remote per distinct learned IP, refcount = its entries
        live = [ip for ip, _ in self.learned.values()]
        assert set(self.fdb._rid) == set(live)
        for ip, rid in self.fdb._rid.items():
            assert self.fdb._refs[rid] == live.count(ip)
        assert len(self.fdb._remotes) - len(self.fdb._free) == len(set(live))


FdbMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
TestFdbAgainstModel = FdbMachine.TestCase
