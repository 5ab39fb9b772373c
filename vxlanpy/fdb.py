"""Forwarding database of one VXLAN segment: MAC -> remote VTEP(s). Pure: time comes in as ``now``.

Semantics follow the Linux vxlan driver driven by ``bridge fdb``:

- **Static** (permanent) entries map a MAC to one or more :class:`Remote` s. ``add`` fails on an
  existing static entry, ``append`` adds a remote (a no-op if it is there already), ``replace``
  sets the remote list to one remote, ``delete`` removes the entry or, given a remote, only that
  remote. An admin ``add``/``append``/``replace`` over a *learned* entry turns it static.
- The **all-zeros MAC** holds the flood list: broadcast, multicast and unknown unicast are
  replicated to every remote on it (head-end replication), or to a multicast group placed there.
- **Learned** entries (inner source MAC -> outer source IP) age out ``ageing`` seconds after the
  last frame that refreshed them (``0`` = never). A learned MAC seen from another VTEP moves. A
  static MAC is never moved by learning: the frame is reported as spoofed.
- ``max_addresses`` (0 = no limit) caps the unicast entries, static and learned, as the kernel's
  ``maxaddress`` does: learning past it is refused and counted; a static add raises FdbFull.
- Bounded by default, unlike the kernel (whose FDB a MAC flood grows without limit):
  ``max_learned`` caps the learned entries (default :data:`DEFAULT_MAX_LEARNED`), and
  ``learn_rate`` how many MACs one remote VTEP may add or move a second (default
  :data:`DEFAULT_LEARN_RATE`, bursts of as many); past either, learning is refused (the frame is
  still delivered) and counted. 0 turns either off.

Learned entries are kept compact (the FDB must hold 10^6 of them): the value is one int packing
the remote's index, the last-seen time in ms and the ageing-wheel slot it is filed under.

Every change to what the FDB maps (an entry added, removed, moved, its remotes changed, the
learning switch) goes into its :class:`ChangeLog`, for whoever mirrors the FDB (the engine,
installing entries into the C datapath). Refreshing a learned entry's time is not a change.
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .limits import RateLimiter
from .wire import ZERO_MAC, check_vni, format_mac

__all__ = [
    "DEFAULT_MAX_LEARNED",
    "DEFAULT_LEARN_RATE",
    "ChangeLog",
    "Remote",
    "FdbEntry",
    "Fdb",
    "LearnResult",
    "FdbError",
    "FdbExists",
    "FdbFull",
    "FdbNotFound",
]


class ChangeLog:
    """The MACs whose entry changed since the watcher last drained the log.

    Nothing is kept until someone watches (``watch``); a watcher is called once each time the
    log goes from empty to not empty, so that it need not look at logs with nothing in them.
    ``everything``: the whole FDB must be read again (a new watcher, a setting that concerns
    every entry)."""

    __slots__ = ("_macs", "_everything", "_watcher")

    def __init__(self) -> None:
        self._macs: set[bytes] = set()
        self._everything = False
        self._watcher: Callable[[], None] | None = None

    def watch(self, watcher: Callable[[], None] | None) -> None:
        """Report changes to ``watcher`` from now on (None: nobody); the first drain will say
        ``everything``."""
        self._watcher = watcher
        self._macs = set()
        self._everything = watcher is not None
        if watcher is not None:
            watcher()

    def note(self, mac: bytes) -> None:
        """The entry of ``mac`` changed."""
        if self._watcher is None:
            return
        if not self._macs and not self._everything:
            self._watcher()
        self._macs.add(mac)

    def note_everything(self) -> None:
        """Every entry must be read again."""
        if self._watcher is None:
            return
        if not self._macs and not self._everything:
            self._watcher()
        self._everything = True

    def drain(self) -> tuple[bool, set[bytes]]:
        """(everything, MACs) changed since the last drain; the log is empty afterwards."""
        out = (self._everything, self._macs)
        self._everything = False
        self._macs = set()
        return out

    def put_back(self, everything: bool, macs: Iterable[bytes]) -> None:
        """Return what a drain gave and the watcher could not apply (it is tried again)."""
        if everything:
            self.note_everything()
        for mac in macs:
            self.note(mac)


# A MAC flood from one sender must not be able to exhaust memory. 16,384 learned MACs per
# segment is more than an L2 segment of hosts or containers needs (OVS's MAC table holds 2,048
# by default) and costs about 4 MB (Python FDB ~190 bytes an entry, the C table ~48); 1,000 new
# MACs a second per remote VTEP is far above what hosts coming up produce, and fills the cap in
# 16 s at the most.
DEFAULT_MAX_LEARNED = 16384
DEFAULT_LEARN_RATE = 1000.0


class FdbError(Exception):
    """Base class of FDB admin errors (the kernel's EEXIST / ENOSPC / ENOENT)."""


class FdbExists(FdbError):
    pass


class FdbFull(FdbError):
    pass


class FdbNotFound(FdbError):
    pass


@dataclass(frozen=True, slots=True)
class Remote:
    """A remote VTEP: underlay IP, and optionally a UDP port and VNI that override the segment's."""

    ip: str
    port: int | None = None
    vni: int | None = None

    @classmethod
    def make(cls, ip: str, port: int | None = None, vni: int | None = None) -> Remote:
        """Validate and normalise (``ValueError`` on a bad address, port or VNI)."""
        addr = ipaddress.ip_address(ip)
        if port is not None and (
            not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535
        ):
            raise ValueError(f"UDP port must be an integer in 1..65535, got {port!r}")
        if vni is not None:
            check_vni(vni)
        return cls(addr.compressed, port, vni)

    def matches(self, other: Remote) -> bool:
        """True if ``other`` names this remote; ``None`` fields in ``other`` match anything."""
        return (
            self.ip == other.ip
            and (other.port is None or other.port == self.port)
            and (other.vni is None or other.vni == self.vni)
        )


@dataclass(frozen=True, slots=True)
class FdbEntry:
    """One row of ``show``: ``age`` is seconds since last seen (learned entries only)."""

    mac: bytes
    remotes: tuple[Remote, ...]
    permanent: bool
    age: float | None

    def __str__(self) -> str:
        kind = "permanent" if self.permanent else f"age {self.age:.0f}s"
        return f"{format_mac(self.mac)} -> {', '.join(r.ip for r in self.remotes)} {kind}"


class LearnResult(enum.Enum):
    NEW = "new"
    REFRESHED = "refreshed"
    MOVED = "moved"
    STATIC = "static"  # matches a static entry from the same VTEP: nothing to do
    SPOOFED = "spoofed"  # claims a static MAC from another VTEP: drop the frame
    REFUSED = "refused"  # max_addresses / max_learned reached: not learned (frame delivered)
    RATE_LIMITED = "rate-limited"  # the remote adds MACs too fast: not learned (delivered)
    DISABLED = "disabled"  # learning is off


_RID_BITS = 24
_RID_MASK = (1 << _RID_BITS) - 1
_MS_BITS = 48
_MS_MASK = (1 << _MS_BITS) - 1
_SCHED_SHIFT = _RID_BITS + _MS_BITS


def _ms(now: float) -> int:
    """The FDB's clock: ``now`` in whole milliseconds, rounded (``int()`` would turn 1.001 s,
    stored as 1.000999..., into 1000 ms)."""
    return round(now * 1000)


def _ageing_ms(ageing: float) -> int:
    """The ageing time in whole milliseconds; a positive time never rounds down to 0 (never)."""
    return max(1, round(ageing * 1000)) if ageing > 0 else 0


class Fdb:
    """The FDB of one segment. See the module docstring for the rules."""

    def __init__(
        self,
        *,
        learning: bool = True,
        ageing: float = 300.0,
        max_addresses: int = 0,
        max_learned: int = DEFAULT_MAX_LEARNED,
        learn_rate: float = DEFAULT_LEARN_RATE,
    ) -> None:
        if ageing < 0:
            raise ValueError("ageing must be >= 0 seconds (0 = never age)")
        if max_addresses < 0:
            raise ValueError("max_addresses must be >= 0 (0 = no limit)")
        if max_learned < 0:
            raise ValueError("max_learned must be >= 0 (0 = no limit)")
        self.max_learned = max_learned
        self.limiter = RateLimiter(learn_rate)  # per remote VTEP: bounded in keys too
        self.static_version = 0  # changes whenever a static entry (or the flood list) does
        self._learning = learning
        self._ageing = float(ageing)
        self._ageing_ms = _ageing_ms(ageing)
        self.max_addresses = max_addresses
        self._static: dict[bytes, tuple[Remote, ...]] = {}
        self._learned: dict[bytes, int] = {}
        # interned remotes of learned entries, with reference counts and a free list
        self._remotes: list[Remote | None] = []
        self._remote_tuple: list[tuple[Remote, ...]] = []
        self._refs: list[int] = []
        self._rid: dict[str, int] = {}
        self._free: list[int] = []
        # ageing wheel: whole second -> MACs filed there; a heap of the seconds in use
        self._wheel: dict[int, list[bytes]] = {}
        self._heap: list[int] = []
        self.changes = ChangeLog()

    # --- sizes and settings -------------------------------------------------------------------

    @property
    def learning(self) -> bool:
        """Learn source MACs from received frames (``bridge link set ... learning``)."""
        return self._learning

    @learning.setter
    def learning(self, on: bool) -> None:
        if on != self._learning:
            self._learning = on
            self.changes.note_everything()  # what an entry lets the datapath do depends on it

    @property
    def ageing(self) -> float:
        return self._ageing

    def set_ageing(self, ageing: float, now: float) -> None:
        """Change the ageing time; every learned entry is re-filed under its new deadline."""
        if ageing < 0:
            raise ValueError("ageing must be >= 0 seconds (0 = never age)")
        self._ageing = float(ageing)
        self._ageing_ms = _ageing_ms(ageing)
        self._wheel.clear()
        self._heap.clear()
        for mac, v in self._learned.items():
            last = (v >> _RID_BITS) & _MS_MASK
            self._learned[mac] = self._pack(mac, v & _RID_MASK, last)

    @property
    def address_count(self) -> int:
        """Unicast entries counted against ``max_addresses`` (the flood list is not one)."""
        return len(self._learned) + len(self._static) - (ZERO_MAC in self._static)

    @property
    def learned_count(self) -> int:
        return len(self._learned)

    def __len__(self) -> int:
        return len(self._learned) + len(self._static)

    def __contains__(self, mac: object) -> bool:
        return mac in self._static or mac in self._learned

    @property
    def learn_full(self) -> bool:
        """``max_learned`` is reached: no new MAC can be learned until one goes."""
        return bool(self.max_learned and len(self._learned) >= self.max_learned)

    def _full(self) -> bool:
        return bool(self.max_addresses) and self.address_count >= self.max_addresses

    # --- lookups (hot path) -------------------------------------------------------------------

    def lookup(self, mac: bytes) -> tuple[Remote, ...] | None:
        """Remotes for a unicast ``mac``, or ``None`` if unknown (the caller floods or drops)."""
        r = self._static.get(mac)
        if r is not None:
            return r
        v = self._learned.get(mac)
        if v is not None:
            return self._remote_tuple[v & _RID_MASK]
        return None

    def flood_list(self) -> tuple[Remote, ...]:
        """Remotes that get broadcast, multicast and unknown unicast (the all-zeros entry)."""
        return self._static.get(ZERO_MAC, ())

    # --- admin operations (bridge fdb add / append / replace / del) ---------------------------

    def add(self, mac: bytes, remote: Remote) -> None:
        """``bridge fdb add``: create a static entry; FdbExists if one is there already."""
        if mac in self._static:
            raise FdbExists(f"{format_mac(mac)} already has a static entry")
        if not self._drop_learned(mac):
            self._check_room(mac)
        self._static[mac] = (remote,)
        self._changed(mac)

    def append(self, mac: bytes, remote: Remote) -> None:
        """``bridge fdb append``: add ``remote`` to the entry (creating it if needed)."""
        cur = self._static.get(mac)
        if cur is not None:
            if remote not in cur:
                self._static[mac] = cur + (remote,)
                self._changed(mac)
            return
        learned = self.lookup(mac) if mac in self._learned else None
        if learned is None:
            self._check_room(mac)
        self._drop_learned(mac)
        base = tuple(r for r in (learned or ()) if r != remote)
        self._static[mac] = base + (remote,)
        self._changed(mac)

    def replace(self, mac: bytes, remote: Remote) -> None:
        """``bridge fdb replace``: the entry becomes static with ``remote`` as its only remote."""
        if mac not in self._static and not self._drop_learned(mac):
            self._check_room(mac)
        self._static[mac] = (remote,)
        self._changed(mac)

    def delete(self, mac: bytes, remote: Remote | None = None) -> None:
        """``bridge fdb del``: remove the entry, or only ``remote`` from it; FdbNotFound if absent.

        A remote given with ``port``/``vni`` of ``None`` matches any port/VNI.
        """
        cur = self._static.get(mac)
        if cur is not None:
            self._changed(mac)
            if remote is None:
                del self._static[mac]
                return
            keep = tuple(r for r in cur if not r.matches(remote))
            if len(keep) == len(cur):
                raise FdbNotFound(f"{format_mac(mac)} has no remote {remote.ip}")
            if keep:
                self._static[mac] = keep
            else:
                del self._static[mac]
            return
        v = self._learned.get(mac)
        if v is None:
            raise FdbNotFound(f"{format_mac(mac)} is not in the FDB")
        if remote is not None and not self._rem(v).matches(remote):
            raise FdbNotFound(f"{format_mac(mac)} has no remote {remote.ip}")
        self._drop_learned(mac)
        self._changed(mac)

    def flush(self, *, static: bool = False) -> None:
        """Remove every learned entry (and the static ones too with ``static=True``)."""
        for mac in list(self._learned):
            self._drop_learned(mac)
            self._changed(mac)
        if static:
            for mac in self._static:
                self._changed(mac)
            self._static.clear()

    def _check_room(self, mac: bytes) -> None:
        if mac != ZERO_MAC and self._full():
            raise FdbFull(f"FDB is full ({self.max_addresses} addresses)")

    # --- learning and ageing ------------------------------------------------------------------

    def learn(self, mac: bytes, ip: str, now: float) -> tuple[LearnResult, str | None]:
        """Note that a frame from ``mac`` arrived from the VTEP ``ip`` at ``now``.

        Returns the result and, for MOVED, the previous remote's IP. The caller drops the frame
        on SPOOFED and delivers it otherwise; it emits events for NEW, MOVED.
        """
        st = self._static.get(mac)
        if st is not None:
            for r in st:
                if r.ip == ip:
                    return LearnResult.STATIC, None
            return LearnResult.SPOOFED, None
        if not self.learning:
            return LearnResult.DISABLED, None
        ms = _ms(now) & _MS_MASK
        v = self._learned.get(mac)
        if v is not None:
            rid = v & _RID_MASK
            sched = v >> _SCHED_SHIFT
            old = self._remotes[rid]
            assert old is not None
            if old.ip == ip:
                self._learned[mac] = (sched << _SCHED_SHIFT) | (ms << _RID_BITS) | rid
                return LearnResult.REFRESHED, None
            if not self._can_ref(ip):
                return LearnResult.REFUSED, None
            if not self.limiter.allow(ip, now):
                return LearnResult.RATE_LIMITED, None
            self._unref(rid)
            rid = self._ref(ip)
            self._learned[mac] = (sched << _SCHED_SHIFT) | (ms << _RID_BITS) | rid
            self._changed(mac)
            return LearnResult.MOVED, old.ip
        if self._full() or not self._can_ref(ip):
            return LearnResult.REFUSED, None
        if self.max_learned and len(self._learned) >= self.max_learned:
            return LearnResult.REFUSED, None
        if not self.limiter.allow(ip, now):
            return LearnResult.RATE_LIMITED, None
        self._learned[mac] = self._pack(mac, self._ref(ip), ms)
        self._changed(mac)
        return LearnResult.NEW, None

    def is_static(self, mac: bytes) -> bool:
        return mac in self._static

    def last_seen_ms(self, mac: bytes) -> int | None:
        """When the learned entry of ``mac`` was last refreshed (ms), None if not learned."""
        v = self._learned.get(mac)
        return None if v is None else (v >> _RID_BITS) & _MS_MASK

    def touch(self, mac: bytes, seen_ms: int) -> None:
        """Refresh the learned entry of ``mac`` to ``seen_ms`` if that is later (frames its
        mirror forwarded without the FDB seeing them). Nothing for other MACs."""
        v = self._learned.get(mac)
        if v is not None and seen_ms > (v >> _RID_BITS) & _MS_MASK:
            sched = v >> _SCHED_SHIFT
            ms = seen_ms & _MS_MASK
            self._learned[mac] = (sched << _SCHED_SHIFT) | (ms << _RID_BITS) | (v & _RID_MASK)

    def next_deadline(self) -> float | None:
        """When ``expire`` next has work to do (it may find nothing then), or ``None``."""
        return float(self._heap[0]) if self._heap else None

    def expire(
        self, now: float, seen: Callable[[bytes], int | None] | None = None
    ) -> list[tuple[bytes, Remote]]:
        """Remove learned entries whose ageing time has passed; return ``(mac, remote)`` each.

        ``seen(mac)``, if given, reports a later last-seen time (ms) known elsewhere (the C
        cache refreshes entries without the FDB): an entry due to expire is asked first."""
        out: list[tuple[bytes, Remote]] = []
        age_ms = self._ageing_ms
        if age_ms <= 0:
            return out
        now_ms = _ms(now)
        heap, wheel, learned = self._heap, self._wheel, self._learned
        while heap and heap[0] <= now:
            sec = heapq.heappop(heap)
            for mac in wheel.pop(sec, ()):
                v = learned.get(mac)
                if v is None or v >> _SCHED_SHIFT != sec:
                    continue  # deleted, or filed again elsewhere since
                last = (v >> _RID_BITS) & _MS_MASK
                if last + age_ms <= now_ms and seen is not None:
                    later = seen(mac)
                    if later is not None and later > last:
                        last = later & _MS_MASK
                if last + age_ms <= now_ms:
                    out.append((mac, self._rem(v)))
                    del learned[mac]
                    self._unref(v & _RID_MASK)
                    self._changed(mac)
                else:
                    learned[mac] = self._pack(mac, v & _RID_MASK, last)
        return out

    # --- listing ------------------------------------------------------------------------------

    def entries(self, now: float) -> list[FdbEntry]:
        """Every entry: static first (flood list included), then learned with their age."""
        out = [FdbEntry(mac, rs, True, None) for mac, rs in self._static.items()]
        for mac, v in self._learned.items():
            age = max(0.0, now - ((v >> _RID_BITS) & _MS_MASK) / 1000.0)
            out.append(FdbEntry(mac, (self._rem(v),), False, age))
        return out

    def learned_items(self) -> list[tuple[bytes, str, float]]:
        """``(mac, remote_ip, last_seen)`` of each learned entry (for tests and the C cache)."""
        return [
            (mac, self._rem(v).ip, ((v >> _RID_BITS) & _MS_MASK) / 1000.0)
            for mac, v in self._learned.items()
        ]

    def static_items(self) -> list[tuple[bytes, tuple[Remote, ...]]]:
        return list(self._static.items())

    # --- internals ----------------------------------------------------------------------------

    def _changed(self, mac: bytes) -> None:
        if mac in self._static:
            self.static_version += 1
        self.changes.note(mac)

    def static_ips(self) -> set[str]:
        """The IPs of every remote a static entry (the flood list included) names."""
        return {r.ip for rs in self._static.values() for r in rs}

    def _pack(self, mac: bytes, rid: int, last_ms: int) -> int:
        sched = 0
        if self._ageing_ms > 0:
            # the whole second the deadline falls in (rounded up): expire(now >= sched) sees it
            sched = -(-(last_ms + self._ageing_ms) // 1000)
            bucket = self._wheel.get(sched)
            if bucket is None:
                self._wheel[sched] = [mac]
                heapq.heappush(self._heap, sched)
            else:
                bucket.append(mac)
        return (sched << _SCHED_SHIFT) | (last_ms << _RID_BITS) | rid

    def _rem(self, v: int) -> Remote:
        r = self._remotes[v & _RID_MASK]
        assert r is not None
        return r

    def _drop_learned(self, mac: bytes) -> bool:
        v = self._learned.pop(mac, None)
        if v is None:
            return False
        self._unref(v & _RID_MASK)
        return True

    def _can_ref(self, ip: str) -> bool:
        return ip in self._rid or bool(self._free) or len(self._remotes) <= _RID_MASK

    def _ref(self, ip: str) -> int:
        rid = self._rid.get(ip)
        if rid is not None:
            self._refs[rid] += 1
            return rid
        r = Remote(ip)
        if self._free:
            rid = self._free.pop()
            self._remotes[rid] = r
            self._remote_tuple[rid] = (r,)
            self._refs[rid] = 1
        else:
            rid = len(self._remotes)
            self._remotes.append(r)
            self._remote_tuple.append((r,))
            self._refs.append(1)
        self._rid[ip] = rid
        return rid

    def _unref(self, rid: int) -> None:
        self._refs[rid] -= 1
        if self._refs[rid] == 0:
            r = self._remotes[rid]
            assert r is not None
            del self._rid[r.ip]
            self._remotes[rid] = None
            self._remote_tuple[rid] = ()
            self._free.append(rid)
