"""Neighbour table of one segment (IP -> MAC) and the ARP proxy's reply builder. Pure.

With the proxy on, an ARP request from the local device for an address in this table is
answered locally, as the kernel's vxlan ``proxy`` flag does (``arp_reduce``); an unknown address
is an L3 miss and the request is dropped, not flooded. IPv6 neighbour solicitations are
answered the same way from the IPv6 entries (``neigh_reduce``; the advertisement: nd.py).
"""

from __future__ import annotations

import ipaddress

from .wire import ARP_REPLY, ArpPacket, build_arp_frame, format_mac

__all__ = ["NeighTable", "NeighExists", "NeighNotFound", "arp_reply"]


class NeighExists(Exception):
    pass


class NeighNotFound(Exception):
    pass


def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


class NeighTable:
    """Static IP -> MAC entries (``ip neigh add ... nud permanent``)."""

    def __init__(self) -> None:
        self._entries: dict[bytes, bytes] = {}

    def add(self, ip: str, mac: bytes) -> None:
        """Add an entry; NeighExists if ``ip`` is there already (use ``replace``)."""
        key = _packed(ip)
        if key in self._entries:
            raise NeighExists(f"{ip} already has a neighbour entry")
        self._entries[key] = _check_mac(mac)

    def replace(self, ip: str, mac: bytes) -> None:
        self._entries[_packed(ip)] = _check_mac(mac)

    def delete(self, ip: str) -> None:
        try:
            del self._entries[_packed(ip)]
        except KeyError:
            raise NeighNotFound(f"{ip} has no neighbour entry") from None

    def lookup(self, packed_ip: bytes) -> bytes | None:
        """MAC for a packed IPv4 (4 bytes) or IPv6 (16 bytes) address, or ``None``."""
        return self._entries.get(packed_ip)

    def entries(self) -> list[tuple[str, bytes]]:
        return [(str(ipaddress.ip_address(k)), v) for k, v in self._entries.items()]

    def __len__(self) -> int:
        return len(self._entries)


def _check_mac(mac: bytes) -> bytes:
    if len(mac) != 6 or mac[0] & 1:
        raise ValueError(f"neighbour MAC must be a unicast address, got {format_mac(mac)}")
    return bytes(mac)


def arp_reply(request: ArpPacket, mac: bytes) -> bytes:
    """The Ethernet frame answering ``request`` with ``mac`` as the owner of its target IP."""
    reply = ArpPacket(ARP_REPLY, mac, request.tpa, request.sha, request.spa)
    return build_arp_frame(request.sha, mac, reply)
