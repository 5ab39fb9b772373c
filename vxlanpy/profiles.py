"""Interop profiles: what a kind of peer VTEP expects on the wire, as defaults for a VTEP's
settings (``--profile linux|rfc|ovs``, ``profile = "..."`` in ``[vtep]``).

A profile gives the destination port, the source-port range, whether reserved header bits
drop a packet (``strict``), the outer UDP checksum (``udpcsum`` over IPv4; ``udp6zerocsumtx``
/ ``udp6zerocsumrx`` over IPv6, in iproute2's words) and DF. A setting given explicitly (a
flag, a key of the file) wins over its profile. Without a profile, vxlanpy's own defaults hold
(:data:`DEFAULT`).

- ``linux``: the kernel's vxlan with iproute2's defaults: port 8472 (the kernel's when no
  ``dstport`` is given), source ports 32768:60999 (``net.ipv4.ip_local_port_range``'s
  default), reserved bits dropped (the kernel drops a header with bits it does not parse),
  UDP checksums on (``udpcsum``; ``noudp6zerocsumtx``, ``noudp6zerocsumrx``), DF unset.
- ``rfc``: RFC 7348: port 4789, source ports 49152:65535 (section 5 recommends the dynamic
  range), reserved bits ignored, a zero UDP checksum over IPv4 (it "SHOULD be transmitted as
  zero") and zero checksums accepted over IPv6 (section 5: they "MUST be accepted"), DF set
  (section 4.3: VTEPs "MUST NOT fragment").
- ``ovs``: Open vSwitch's vxlan port (userspace datapath): port 4789, source ports
  32768:61000 (``tnl_udp_port_min``/``max``), reserved bits dropped (its decapsulation drops
  flags other than I and a non-zero reserved VNI byte), zero UDP checksums sent and taken
  (OVS reads raw bytes off a veth, where the partial checksum a Linux UDP socket leaves is
  not completed: it drops it; it takes zeros, and sends them over IPv4, its ``csum`` option
  being off, and checksums over IPv6, as seen in tests/netns/test_ovs.py), DF set
  (``df_default``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Profile", "PROFILES", "DEFAULT", "profile"]

DfMode = Literal["unset", "set", "inherit"]


@dataclass(frozen=True)
class Profile:
    """Defaults for the settings a peer cares about on the wire."""

    name: str
    dstport: int
    srcport: tuple[int, int]
    strict: bool
    udpcsum: bool  # IPv4: send UDP checksums (False: zero)
    udp6zerocsumtx: bool  # IPv6: send zero UDP checksums
    udp6zerocsumrx: bool  # IPv6: accept zero UDP checksums
    df: DfMode


DEFAULT = Profile("vxlanpy", 4789, (49152, 65535), False, True, False, False, "unset")
PROFILES: dict[str, Profile] = {
    "linux": Profile("linux", 8472, (32768, 60999), True, True, False, False, "unset"),
    "rfc": Profile("rfc", 4789, (49152, 65535), False, False, False, True, "set"),
    "ovs": Profile("ovs", 4789, (32768, 61000), True, False, True, True, "set"),
}


def profile(name: str | None) -> Profile:
    """The profile called ``name`` (None: vxlanpy's defaults); ValueError if unknown."""
    if name is None:
        return DEFAULT
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"profile must be one of {known}, got {name!r}") from None
