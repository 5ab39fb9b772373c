"""What the engine hands the driver to write: datagrams for the wire, frames for a device."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Datagram", "DeviceFrame"]


class Datagram(NamedTuple):
    """A UDP datagram to send: ``payload`` (VXLAN header + frame) to ``host:port`` from
    source port ``sport``. ``slot`` is the batch slot it was made from (-1: a copy)."""

    payload: bytes | memoryview
    host: str
    port: int
    sport: int
    vni: int
    slot: int = -1


class DeviceFrame(NamedTuple):
    """An Ethernet frame to write to the device of segment ``vni`` (``slot``: as Datagram)."""

    vni: int
    frame: bytes | memoryview
    slot: int = -1
