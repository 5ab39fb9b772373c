"""FrameBatch: many frames in one buffer, each with headroom for the VXLAN header.

The layout is what lets the fast path work without copies: the TAP reader writes frame *i* at
``frame_offset(i)``; the encapsulation kernel writes the 8-byte VXLAN header into the 8 bytes just
before it; the UDP payload is then ``payload(i)``, header and frame contiguous. Receiving runs
the other way: a datagram is read into ``header_offset(i)`` and its inner frame already sits at
``frame_offset(i)``, ready to be written to the TAP.

::

    slot i: | spare (headroom - 8) | VXLAN header (8) | frame (max_frame) |
            ^ i * slot             ^ header_offset(i) ^ frame_offset(i)

Per-frame metadata lives in flat ``array`` columns that C reads and writes directly.
"""

from __future__ import annotations

from array import array
from typing import Any

from .abi import ADDR_LEN
from .wire import VXLAN_HLEN

__all__ = ["FrameBatch", "DEFAULT_HEADROOM", "DEFAULT_MAX_FRAME", "DEFAULT_BATCH"]

DEFAULT_HEADROOM = 64
DEFAULT_MAX_FRAME = 9216 + 18  # jumbo MTU + Ethernet header and one VLAN tag
DEFAULT_BATCH = 64


class FrameBatch:
    """A fixed-capacity batch of frames; ``count`` says how many slots are in use."""

    __slots__ = (
        "capacity",
        "max_frame",
        "headroom",
        "slot",
        "buf",
        "count",
        "frame_len",
        "payload_len",
        "vni",
        "status",
        "sport",
        "gso_type",
        "gso_size",
        "offload",
        "action",
        "addrs",
        "order",
        "tos",
        "ttl",
        "df",
        "views",
    )

    def __init__(
        self,
        capacity: int = DEFAULT_BATCH,
        max_frame: int = DEFAULT_MAX_FRAME,
        headroom: int = DEFAULT_HEADROOM,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if headroom < VXLAN_HLEN:
            raise ValueError(f"headroom must be at least {VXLAN_HLEN} bytes")
        if max_frame < 14:
            raise ValueError("max_frame must hold at least an Ethernet header")
        self.capacity = capacity
        self.max_frame = max_frame
        self.headroom = headroom
        self.slot = (headroom + max_frame + 63) & ~63  # cache-line aligned slots
        self.buf = bytearray(self.slot * capacity)
        self.count = 0
        self.frame_len = array("I", bytes(4 * capacity))  # inner frame length
        self.payload_len = array("I", bytes(4 * capacity))  # VXLAN header + frame length
        self.vni = array("I", bytes(4 * capacity))
        self.status = array("i", bytes(4 * capacity))  # 0 ok, else a wire.STATUS_REASONS key
        self.sport = array("H", bytes(2 * capacity))  # outer UDP source port
        # offloads: a TAP's super-frame GSO type and size (virtio-net), a UDP GRO receive's
        # segment size, and abi.Offload flags (partial checksum, checksum verified, coalesced)
        self.gso_type = array("B", bytes(capacity))
        self.gso_size = array("H", bytes(2 * capacity))
        self.offload = array("B", bytes(capacity))
        # the C datapath's verdict per slot (datapath.py) and each datagram's source sockaddr
        self.action = array("i", bytes(4 * capacity))
        self.addrs = bytearray(ADDR_LEN * capacity)
        # the C receive pump's slots in wire order (its split UDP GRO receives use spare slots)
        self.order = array("I", bytes(4 * capacity))
        # the outer header: TOS, TTL (0: the socket's) and DF to send with; TOS received
        self.tos = array("B", bytes(capacity))
        self.ttl = array("B", bytes(capacity))
        self.df = array("B", bytes(capacity))
        self.views: dict[str, Any] = {}  # cached cffi views (kernels.py: the vx_batch struct)

    def frame_offset(self, i: int) -> int:
        return i * self.slot + self.headroom

    def header_offset(self, i: int) -> int:
        return i * self.slot + self.headroom - VXLAN_HLEN

    def frame(self, i: int) -> memoryview:
        """The inner frame in slot ``i`` (a view: valid until the slot is reused)."""
        off = self.frame_offset(i)
        return memoryview(self.buf)[off : off + self.frame_len[i]]

    def payload(self, i: int) -> memoryview:
        """The UDP payload (VXLAN header + frame) in slot ``i``."""
        off = self.header_offset(i)
        return memoryview(self.buf)[off : off + self.payload_len[i]]

    def frame_buffer(self, i: int) -> memoryview:
        """Writable room for a frame in slot ``i`` (``max_frame`` bytes), for ``readinto``."""
        off = self.frame_offset(i)
        return memoryview(self.buf)[off : off + self.max_frame]

    def payload_buffer(self, i: int) -> memoryview:
        """Writable room for a received UDP payload in slot ``i``, for ``recv_into``."""
        off = self.header_offset(i)
        return memoryview(self.buf)[off : off + self.max_frame + VXLAN_HLEN]

    def clear(self) -> None:
        self.count = 0

    def full(self) -> bool:
        return self.count >= self.capacity

    def append_frame(self, frame: bytes | bytearray | memoryview, vni: int = 0) -> int:
        """Copy ``frame`` into the next slot (for callers that do not read in place)."""
        i = self._next(len(frame), self.max_frame)
        off = self.frame_offset(i)
        self.buf[off : off + len(frame)] = frame
        self.frame_len[i] = len(frame)
        self.vni[i] = vni
        return i

    def append_payload(self, payload: bytes | bytearray | memoryview) -> int:
        """Copy a received UDP payload into the next slot."""
        i = self._next(len(payload), self.max_frame + VXLAN_HLEN)
        off = self.header_offset(i)
        self.buf[off : off + len(payload)] = payload
        self.payload_len[i] = len(payload)
        return i

    def _next(self, size: int, limit: int) -> int:
        if self.count >= self.capacity:
            raise OverflowError("batch is full")
        if size > limit:
            raise ValueError(f"{size} bytes do not fit in a {limit}-byte slot")
        i = self.count
        self.count += 1
        return i
