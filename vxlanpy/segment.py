"""One VXLAN segment (VNI) of a VTEP: its configuration, tables, settings and counters. Pure.

The engine (engine.py) decides with this state; whoever mirrors it (the engine, installing
into the C datapath) watches it: ``Segment.watch`` reports every change to a setting, to the
FDB object or to an FDB entry (through the FDB's own change log).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast, overload

from .fdb import DEFAULT_LEARN_RATE, DEFAULT_MAX_LEARNED, Fdb, Remote
from .gbp import GroupCounters, Policy
from .limits import Allowlist
from .neigh import NeighTable
from .wire import ZERO_MAC, DropReason, check_vni

__all__ = ["SegmentConfig", "Segment", "Counters"]


@dataclass(slots=True)
class Counters:
    """Per-segment counters of the engine's decisions (the engine-wide ones count drops not
    attributable to a VNI). The C datapath counts what it forwards itself (abi.SEG_COUNTERS);
    stats.py adds the two.

    tx counts datagrams sent (a flooded frame counts once per copy) and their inner bytes;
    rx counts frames delivered to the device.
    """

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    floods: int = 0
    l2_misses: int = 0
    l3_misses: int = 0
    arp_proxied: int = 0
    nd_proxied: int = 0
    learned: int = 0
    moved: int = 0
    aged: int = 0
    learn_refused: int = 0
    drops: Counter[DropReason] = field(default_factory=Counter)

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in self.__slots__ if k != "drops"}
        out["dropped"] = self.dropped
        out["drops"] = {r.value: n for r, n in sorted(self.drops.items())}
        return out


@dataclass
class SegmentConfig:
    """One VXLAN segment (VNI) of the VTEP.

    ``remotes`` seed the flood list (head-end replication); ``group`` puts a multicast group
    there instead (or as well). ``local_mac`` is the device's own MAC, for loop detection.
    ``max_learned`` and ``learn_rate`` bound learning (fdb.py); ``allow``: the VTEPs VXLAN is
    accepted from (CIDRs, and/or ``"configured"``: the remotes this configuration names; None:
    any). ``gbp``: VXLAN-GBP on (gbp.py): frames sent carry ``gbp_macs``' policy for their
    source MAC, else ``gbp_group`` (None: no group); received policies are counted per group,
    and a D (don't learn) bit is obeyed. The engine handles such a segment's frames itself.
    """

    vni: int
    remotes: Sequence[str] = ()
    group: str | None = None
    learning: bool = True
    ageing: float = 300.0
    max_addresses: int = 0
    proxy: bool = False
    allow_vlan: bool = False
    local_mac: bytes | None = None
    fdb: Sequence[tuple[bytes, Remote]] = ()
    neigh: Sequence[tuple[str, bytes]] = ()
    max_learned: int = DEFAULT_MAX_LEARNED
    learn_rate: float = DEFAULT_LEARN_RATE
    allow: Sequence[str] | str | None = None
    gbp: bool = False
    gbp_group: Policy | None = None
    gbp_macs: Mapping[bytes, Policy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_vni(self.vni)
        if (self.gbp_group is not None or self.gbp_macs) and not self.gbp:
            raise ValueError("a group policy needs gbp on")
        if self.allow is not None:
            Allowlist(self.allow)  # ValueError on a bad network
        if self.group is not None and not ipaddress.ip_address(self.group).is_multicast:
            raise ValueError(f"group {self.group} is not a multicast address")


_T = TypeVar("_T")


class _Setting(Generic[_T]):
    """A setting of a Segment that the datapath mirrors: kept in the slot ``_<name>``; setting
    it reports the change to the segment's watcher."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = "_" + name

    @overload
    def __get__(self, seg: None, owner: type) -> _Setting[_T]: ...
    @overload
    def __get__(self, seg: Segment, owner: type) -> _T: ...
    def __get__(self, seg: Segment | None, owner: type) -> _T | _Setting[_T]:
        return self if seg is None else cast(_T, getattr(seg, self._slot))

    def __set__(self, seg: Segment, value: _T) -> None:
        setattr(seg, self._slot, value)
        seg._changed()


class Segment:
    """Runtime state of one VNI: its FDB, neighbour table, settings and counters."""

    __slots__ = (
        "vni",
        "config",
        "_fdb",
        "neigh",
        "counters",
        "_proxy",
        "_allow_vlan",
        "_local_mac",
        "_watcher",
        "_allow",
        "_configured",
        "gbp_rx",
        "gbp_tx",
    )

    def __init__(self, config: SegmentConfig) -> None:
        self.vni = config.vni
        self.config = config
        self._watcher: Callable[[], None] | None = None
        self._fdb = Fdb(
            learning=config.learning,
            ageing=config.ageing,
            max_addresses=config.max_addresses,
            max_learned=config.max_learned,
            learn_rate=config.learn_rate,
        )
        self._allow = Allowlist(config.allow) if config.allow is not None else None
        self._configured: tuple[int, set[str]] = (-1, set())
        self.neigh = NeighTable()
        self.counters = Counters()
        self.gbp_rx = GroupCounters()  # policies received (VXLAN-GBP on), per group
        self.gbp_tx = GroupCounters()  # and sent
        self._proxy = config.proxy
        self._allow_vlan = config.allow_vlan
        self._local_mac = config.local_mac
        for ip in config.remotes:
            self._fdb.append(ZERO_MAC, Remote.make(ip))
        if config.group is not None:
            self._fdb.append(ZERO_MAC, Remote.make(config.group))
        for mac, remote in config.fdb:
            self._fdb.append(mac, remote)
        for ip, mac in config.neigh:
            self.neigh.replace(ip, mac)

    def watch(self, watcher: Callable[[], None] | None) -> None:
        """Call ``watcher`` when something the datapath mirrors changes (a setting, the FDB
        object, an FDB entry); then drain ``fdb.changes``. None: stop."""
        self._watcher = watcher
        self._fdb.changes.watch(watcher)

    def _changed(self) -> None:
        if self._watcher is not None:
            self._watcher()

    @property
    def fdb(self) -> Fdb:
        return self._fdb

    @fdb.setter
    def fdb(self, fdb: Fdb) -> None:
        self._fdb.changes.watch(None)
        self._fdb = fdb
        fdb.changes.watch(self._watcher)  # the new FDB is mirrored from scratch

    proxy = _Setting[bool](
        "Answer ARP requests and IPv6 neighbour solicitations from the neighbour table (the "
        "kernel's ``proxy``)."
    )
    allow_vlan = _Setting[bool](
        "Carry 802.1Q/802.1ad tagged frames (RFC 7348 section 6.1 says drop them)."
    )
    allow = _Setting["Allowlist | None"]("The VTEPs VXLAN is accepted from (None: any).")

    def configured_remotes(self) -> set[str]:
        """The IPs of the remotes the configuration names: flood list and static entries."""
        version, ips = self._configured
        if version != self._fdb.static_version:
            ips = self._fdb.static_ips()
            self._configured = (self._fdb.static_version, ips)
        return ips

    def permits(self, ip: str) -> bool:
        """Is VXLAN from the VTEP ``ip`` accepted?"""
        a = self._allow
        return a is None or a.permits(ip, self.configured_remotes() if a.configured else ())

    @property
    def gbp(self) -> bool:
        """VXLAN-GBP on (a configuration setting: fixed for the segment's life)."""
        return self.config.gbp

    def gbp_policy(self, src_mac: bytes) -> Policy | None:
        """The policy a frame from ``src_mac`` leaves with (None: none)."""
        c = self.config
        return c.gbp_macs.get(src_mac, c.gbp_group)

    @property
    def local_mac(self) -> bytes | None:
        """The device's own MAC: a frame from the wire with it as source has looped."""
        return self._local_mac

    @local_mac.setter
    def local_mac(self, mac: bytes | None) -> None:
        old = self._local_mac
        self._local_mac = mac
        for m in (old, mac):
            if m is not None:
                self._fdb.changes.note(m)  # its entry's rules change
        self._changed()
