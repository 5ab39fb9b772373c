"""Keeps a C datapath installed with what the engine decided: the mechanics, not the decisions.

The engine (engine.py) says, per segment, what C may do (``rule_of``) and, per MAC, what its
entry allows (``entry_of``); this class watches the segments (their settings, their FDB's
change log), and on ``sync`` installs what changed: the rule, the flood action and the
allowlist prefixes of each changed segment, the entry of each changed MAC, and the datapath's
settings. A push that fails is kept to be tried again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

from .abi import EntryFlag, From
from .datapath import Datapath, Network, Rule, Target
from .fdb import Remote
from .headers import Outer
from .segment import Segment

__all__ = ["Mirror"]

RuleOf = Callable[[Segment, int], tuple[Rule, list[Network]]]
EntryOf = Callable[[Segment, bytes], tuple[tuple[Target, ...], int] | None]
TargetsOf = Callable[[Segment, tuple[Remote, ...]], tuple[Target, ...]]
Settings = tuple[tuple[int, int], int, bool, Outer]  # source ports, strict, checksums, outer


class Mirror:
    """What the engine installed in ``dp``, kept in step (see the module docstring)."""

    def __init__(
        self, dp: Datapath, rule_of: RuleOf, entry_of: EntryOf, targets_of: TargetsOf
    ) -> None:
        self.dp = dp
        self._rule_of, self._entry_of, self._targets_of = rule_of, entry_of, targets_of
        self._changed: set[int] = set()  # VNIs with something to install
        self._installed: dict[int, tuple[Rule, list[Network]]] = {}  # rule and prefixes
        self._settings: Settings | None = None
        self.on_change: Callable[[], None] | None = None  # told when something waits to sync

    def watch(self, seg: Segment) -> None:
        """Follow ``seg`` from now on (all of it is installed on the next sync)."""
        seg.watch(functools.partial(self._note, seg.vni))

    def _note(self, vni: int) -> None:
        self._changed.add(vni)
        if self.on_change is not None:
            self.on_change()

    def forget(self, seg: Segment) -> None:
        """``seg`` is no longer served: stop following it, remove what it had installed."""
        seg.watch(None)
        self._changed.discard(seg.vni)
        installed = self._installed.pop(seg.vni, None)
        self.dp.remove_segment(seg.vni)
        if installed is not None:
            self.dp.release(installed[0].group_action)

    def sync(self, segments: Mapping[int, Segment], settings: Settings) -> None:
        """Install what changed: the datapath's ``settings`` (source ports, strict, checksum
        completion, outer header) if they differ, then every changed segment."""
        dp = self.dp
        if settings == self._settings and not self._changed:
            return
        with dp.exclusive():
            self._sync(segments, settings)

    def _sync(self, segments: Mapping[int, Segment], settings: Settings) -> None:
        dp = self.dp
        if settings != self._settings:
            dp.configure(*settings)
            self._settings = settings
        while self._changed:
            vni = self._changed.pop()
            seg = segments.get(vni)
            if seg is None:
                continue
            everything, macs = seg.fdb.changes.drain()
            try:
                self._install_segment(seg)
                if everything:
                    dp.clear(vni)  # a new FDB object or a new watcher: nothing old may stay
                    macs = _all_macs(seg) | macs
                while macs:  # one at a time: a failed push leaves the rest (and itself) to redo
                    mac = macs.pop()
                    try:
                        self._install_entry(seg, mac)
                    except BaseException:
                        macs.add(mac)
                        raise
            except BaseException:
                seg.fdb.changes.put_back(False, macs)
                self._changed.add(vni)
                raise

    def _install_segment(self, seg: Segment) -> None:
        """The segment's rule, its flood action and allowlist, as they should be now."""
        dp = self.dp
        flood = seg.fdb.flood_list()
        aid = dp.action(self._targets_of(seg, flood)) if flood else 0
        want = self._rule_of(seg, aid)
        old = self._installed.get(seg.vni)
        if old is not None and want == old:
            dp.release(aid)  # the same action: drop the reference taken just now
            return
        rule, nets = want
        dp.set_segment(seg.vni, rule)
        if rule.rx_from == From.ALLOWED:
            dp.set_allow(seg.vni, nets)
        self._installed[seg.vni] = want
        if old is not None:
            dp.release(old[0].group_action)

    def _install_entry(self, seg: Segment, mac: bytes) -> None:
        dp = self.dp
        want = self._entry_of(seg, mac)
        if want is None:
            dp.delete(seg.vni, mac)
            return
        targets, flags = want
        aid = dp.action(targets) if targets else 0
        if not aid:  # nothing C can send to, or no room: only what needs no action stays
            flags &= EntryFlag.DELIVER_ANY | EntryFlag.STATIC
        dp.put(seg.vni, mac, aid, flags, seg.fdb.last_seen_ms(mac) or 0)


def _all_macs(seg: Segment) -> set[bytes]:
    fdb = seg.fdb
    macs = {mac for mac, _r in fdb.static_items()} | {m for m, _ip, _t in fdb.learned_items()}
    if seg.local_mac is not None:
        macs.add(seg.local_mac)
    return macs
