"""Events the engine emits instead of logging. The driver decides what to print or stream.

All events are frozen, slotted dataclasses; MAC addresses are 6 raw bytes, IP addresses strings.
``to_dict()`` gives a JSON-friendly form (used by the control socket and the CLI).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .wire import DropReason, format_mac

__all__ = [
    "Event",
    "MacLearned",
    "MacMoved",
    "MacAged",
    "L2Miss",
    "L3Miss",
    "LearnRefused",
    "Dropped",
    "IcmpError",
    "PeerMismatch",
]


@dataclass(frozen=True, slots=True)
class Event:
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": _NAMES[type(self)]}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None and f.metadata.get("omit_none"):
                continue  # an optional detail (a VXLAN-GBP group) not there
            if isinstance(v, bytes):
                v = format_mac(v)
            elif isinstance(v, DropReason):
                v = v.value
            out[f.name] = v
        return out


@dataclass(frozen=True, slots=True)
class _MacAt(Event):
    """What the MAC events have in common: ``mac`` on ``vni``, behind the VTEP ``remote``."""

    vni: int
    mac: bytes
    remote: str


@dataclass(frozen=True, slots=True)
class MacLearned(_MacAt):
    """``mac`` on ``vni`` is behind the VTEP ``remote`` (learned from a received frame);
    ``group``: the VXLAN-GBP policy that frame carried (``0x0010/A``), on a segment with GBP."""

    group: str | None = field(default=None, metadata={"omit_none": True})


@dataclass(frozen=True, slots=True)
class MacMoved(Event):
    """A learned ``mac`` now arrives from ``remote`` instead of ``old_remote``."""

    vni: int
    mac: bytes
    old_remote: str
    remote: str
    group: str | None = field(default=None, metadata={"omit_none": True})  # as MacLearned's


@dataclass(frozen=True, slots=True)
class MacAged(_MacAt):
    """A learned entry was not refreshed within the ageing time and was removed."""


@dataclass(frozen=True, slots=True)
class L2Miss(Event):
    """A frame from the device went to a unicast ``mac`` with no FDB entry.

    ``flooded`` says whether it was replicated to the flood list (else it was dropped).
    """

    vni: int
    mac: bytes
    flooded: bool


@dataclass(frozen=True, slots=True)
class L3Miss(Event):
    """The ARP or ND proxy was asked for ``ip`` and has no neighbour entry; the request (ARP
    request or neighbour solicitation) was dropped."""

    vni: int
    ip: str


@dataclass(frozen=True, slots=True)
class LearnRefused(Event):
    """``count`` MACs were not learned on ``vni`` since the last such event (at most one a
    second per segment), the last from the VTEP ``remote``; ``reason``: ``full``
    (max_learned or max_addresses reached) or ``rate`` (the remote adds MACs too fast). The
    frames were delivered."""

    vni: int
    remote: str
    reason: str
    count: int


@dataclass(frozen=True, slots=True)
class Dropped(Event):
    """A packet was dropped. ``vni`` is None when it was dropped before a VNI was known."""

    reason: DropReason
    vni: int | None
    source: str | None


@dataclass(frozen=True, slots=True)
class IcmpError(Event):
    """ICMP errors came back about datagrams sent to ``remote`` (a remote VTEP): ``kind`` is
    ``unreachable``, ``frag_needed`` (``mtu`` the MTU it reports), ``ttl_exceeded`` or
    ``other``; ``icmp_type``/``icmp_code`` and ``offender`` (the node that sent it) are the last
    one's. At most one event per remote per second: ``count`` is the errors since the last."""

    remote: str
    kind: str
    icmp_type: int
    icmp_code: int
    mtu: int | None
    offender: str | None
    count: int


@dataclass(frozen=True, slots=True)
class PeerMismatch(Event):
    """A peer VTEP's packets show it expects other settings than this VTEP's (the peer
    watch, peerwatch.py): ``kinds`` among ``zero-checksum``, ``checksum``, ``reserved-bits``,
    ``fragments``; ``hint`` says what to change. Once per peer."""

    remote: str
    kinds: tuple[str, ...]
    hint: str


_NAMES: dict[type, str] = {
    MacLearned: "learned",
    MacMoved: "moved",
    MacAged: "aged",
    L2Miss: "l2miss",
    L3Miss: "l3miss",
    LearnRefused: "refused",
    Dropped: "dropped",
    IcmpError: "icmp",
    PeerMismatch: "mismatch",
}
