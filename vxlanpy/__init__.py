"""vxlanpy: a userspace VXLAN (RFC 7348) dataplane.

The sans-I/O core (wire codecs, FDB, neighbour table, forwarding engine) is importable without
privileges; the I/O layer (TAP, UDP, asyncio driver) builds on it.

Quick codec use::

    >>> import vxlanpy
    >>> payload = vxlanpy.encapsulate(b"\\xff" * 6 + b"\\x02" * 6 + b"\\x08\\x06", vni=42)
    >>> vxlanpy.decapsulate(payload)[0]
    42
"""

from __future__ import annotations

from .batch import FrameBatch
from .engine import Counters, Datagram, DeviceFrame, Engine, Segment, SegmentConfig
from .events import (
    Dropped,
    Event,
    IcmpError,
    L2Miss,
    L3Miss,
    MacAged,
    MacLearned,
    MacMoved,
    PeerMismatch,
)
from .fdb import Fdb, FdbEntry, FdbError, FdbExists, FdbFull, FdbNotFound, LearnResult, Remote
from .headers import Outer
from .kernels import BACKEND
from .neigh import NeighExists, NeighNotFound, NeighTable
from .wire import (
    VXLAN_PORT,
    VXLAN_PORT_LINUX,
    DropReason,
    MalformedPacket,
    decapsulate,
    encapsulate,
    flow_hash,
    format_mac,
    parse_mac,
    source_port,
)

__version__ = "0.1.0"

__all__ = [
    "BACKEND",
    "Counters",
    "Datagram",
    "DeviceFrame",
    "DropReason",
    "Dropped",
    "Engine",
    "Event",
    "Fdb",
    "FdbEntry",
    "FdbError",
    "FdbExists",
    "FdbFull",
    "FdbNotFound",
    "FrameBatch",
    "IcmpError",
    "PeerMismatch",
    "L2Miss",
    "L3Miss",
    "LearnResult",
    "MacAged",
    "MacLearned",
    "MacMoved",
    "MalformedPacket",
    "NeighExists",
    "NeighNotFound",
    "NeighTable",
    "Outer",
    "Remote",
    "Segment",
    "SegmentConfig",
    "VXLAN_PORT",
    "VXLAN_PORT_LINUX",
    "decapsulate",
    "encapsulate",
    "flow_hash",
    "format_mac",
    "parse_mac",
    "source_port",
    "__version__",
]
