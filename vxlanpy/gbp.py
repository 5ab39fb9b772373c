"""VXLAN Group Based Policy (draft-smith-vxlan-group-policy, the kernel's ``gbp``): a 16-bit
group policy ID and two flags carried in the VXLAN header's reserved bits.

::

    |G|R|R|R|I|R|R|R|R|D|R|R|A|R|R|R|        Group Policy ID        |
    |          VXLAN Network Identifier (VNI)       |   Reserved    |

G: a group policy ID is present; D: the receiving VTEP must not learn the inner source address
from this frame; A: the policy has been applied already. The kernel carries the group as the
packet mark (``ID | 0x400000`` for D, ``| 0x80000`` for A); vxlanpy has no socket buffer to
mark, so a segment with GBP on sets the group from its configuration (its default, or per inner
source MAC) and counts what it receives per group. Pure code: no I/O.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from .abi import GBP_A, GBP_D, GBP_G

__all__ = ["Policy", "read", "write", "reserved_used", "GroupCounters", "MARK_D", "MARK_A"]

MARK_D = 0x400000  # the kernel's VXLAN_GBP_DONT_LEARN in the mark
MARK_A = 0x80000  # VXLAN_GBP_POLICY_APPLIED
_TEXT = re.compile(r"^(0[xX][0-9a-fA-F]+|[0-9]+)((?:/[DAda])*)$")


@dataclass(frozen=True, slots=True)
class Policy:
    """A group policy ID and the D (don't learn) and A (applied) flags."""

    group: int
    dont_learn: bool = False
    applied: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.group <= 0xFFFF:
            raise ValueError(f"a group policy ID is 0..65535, got {self.group}")

    @classmethod
    def parse(cls, text: str | int) -> Policy:
        """``ID`` (decimal or 0x hex) with optional ``/D`` and ``/A`` flags: ``0x10/A``."""
        if isinstance(text, bool):
            raise ValueError(f"not a group policy: {text!r}")
        if isinstance(text, int):
            return cls(text)
        m = _TEXT.match(text.strip())
        if m is None:
            raise ValueError(f"a group policy is ID[/D][/A] (ID 0..65535), got {text!r}")
        flags = m.group(2).upper()
        return cls(int(m.group(1), 0), "D" in flags, "A" in flags)

    @property
    def mark(self) -> int:
        """The packet mark the kernel gives such a frame (and reads to send one)."""
        return self.group | (MARK_D if self.dont_learn else 0) | (MARK_A if self.applied else 0)

    def __str__(self) -> str:
        return (
            f"{self.group:#06x}"
            + ("/D" if self.dont_learn else "")
            + ("/A" if self.applied else "")
        )


def read(header: bytes | bytearray | memoryview) -> Policy | None:
    """The policy in a VXLAN header (8 bytes or more), or None if its G bit is clear."""
    if not header[0] & GBP_G:
        return None
    return Policy((header[2] << 8) | header[3], bool(header[1] & GBP_D), bool(header[1] & GBP_A))


def reserved_used(buf: bytes | bytearray | memoryview, off: int) -> bool:
    """Does the VXLAN header at ``buf[off:]`` use bits that only GBP may (G, D, A, group)?"""
    return bool(buf[off] & GBP_G or buf[off + 1] or buf[off + 2] or buf[off + 3])


def write(buf: bytearray | memoryview, off: int, policy: Policy) -> None:
    """Put ``policy`` into the VXLAN header at ``buf[off:]`` (its I flag and VNI kept)."""
    buf[off] |= GBP_G
    buf[off + 1] = (GBP_D if policy.dont_learn else 0) | (GBP_A if policy.applied else 0)
    buf[off + 2] = policy.group >> 8
    buf[off + 3] = policy.group & 0xFF


class GroupCounters:
    """Packets per group policy (text form, as ``Policy.__str__``), at most ``limit`` groups one
    by one, the rest added up under ``other``: no sender can grow it."""

    __slots__ = ("counts", "limit")

    def __init__(self, limit: int = 256) -> None:
        self.counts: Counter[str] = Counter()
        self.limit = limit

    def add(self, policy: Policy | None, n: int = 1) -> None:
        key = "none" if policy is None else str(policy)
        if key not in self.counts and len(self.counts) >= self.limit:
            key = "other"
        self.counts[key] += n

    def to_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))
