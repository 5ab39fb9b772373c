"""The constants, enums and counter structs of the C fast path, read from its header.

``csrc/vx.h`` declares them once, as enums and structs. With the extension built they come from
it (its ``ffi``); without it, or with the pure-Python backend chosen (``VXLANPY_PURE_PYTHON``),
the same header is parsed by cffi. Every value below is read from there: Python names the
members, the header gives their values.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "ffi",
    "Status",
    "Offload",
    "Gso",
    "Verdict",
    "TxMatch",
    "RxMatch",
    "EntryFlag",
    "Miss",
    "From",
    "RxMore",
    "Held",
    "SEG_COUNTERS",
    "DP_COUNTERS",
]

HEADER = Path(__file__).resolve().parent / "csrc" / "vx.h"


def _load_ffi() -> Any:
    pure = os.environ.get("VXLANPY_PURE_PYTHON", "").strip().lower() in ("1", "true", "yes", "on")
    if not pure:
        try:
            from . import _native  # type: ignore[attr-defined]

            return _native.ffi
        except ImportError:
            pass
    from cffi import FFI

    f = FFI()
    text = HEADER.read_text()
    f.cdef("\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
    return f


ffi: Any = _load_ffi()
_values: dict[str, int] = {}
for _name in (
    "vx_const",
    "vx_status",
    "vx_offload",
    "vx_gso",
    "vx_verdict",
    "vx_tx_match",
    "vx_rx_match",
    "vx_entry_flags",
    "vx_miss",
    "vx_from",
    "vx_strict",
    "vx_gbp_bits",
    "vx_rx_more",
    "vx_held",
):
    _values.update({k: int(v) for k, v in ffi.typeof(f"enum {_name}").relements.items()})


def _v(name: str) -> int:
    return _values[name]


class _NextValue(Protocol):  # Enum._generate_next_value_, argument names and all
    def __call__(self, name: str, start: int, count: int, last_values: list[Any]) -> int: ...


def _named(prefix: str) -> _NextValue:
    """An enum's ``_generate_next_value_``: a member ``NAME = enum.auto()`` takes the value of
    the header's ``<prefix>NAME``."""

    def value(name: str, start: int, count: int, last_values: list[Any]) -> int:
        return _v(prefix + name)

    return value


HLEN = _v("VX_HLEN")
ETH_HLEN = _v("VX_ETH_HLEN")
ADDR_LEN = _v("VX_ADDR_LEN")
VNET_HLEN = _v("VX_VNET_HLEN")
MAX_BATCH = _v("VX_MAX_BATCH")
MAX_CHUNKS = _v("VX_MAX_CHUNKS")
MAX_SEGMENTS = _v("VX_MAX_SEGMENTS")
MAX_REMOTES = _v("VX_MAX_REMOTES")
MAX_ACTIONS = _v("VX_MAX_ACTIONS")
ACTION_REMOTES = _v("VX_ACTION_REMOTES")
LEN_TRUNCATED = _v("VX_LEN_TRUNCATED")
GSO_MAX_SEGS = _v("VX_GSO_MAX_SEGS")
GSO_MAX_BYTES = _v("VX_GSO_MAX_BYTES")
NERRNO = _v("VX_NERRNO")
RECV_CHUNK = _v("VX_RECV_CHUNK")
ALLOW_PREFIXES = _v("VX_ALLOW_PREFIXES")
MAX_PEERS = _v("VX_MAX_PEERS")
BATCH_BUCKETS = _v("VX_BATCH_BUCKETS")
LOOP_TAPS = _v("VX_LOOP_TAPS")


class Strict(enum.IntEnum):
    """Header parsing: reserved bits ignored, a drop, or a drop but for the VXLAN-GBP bits."""

    _generate_next_value_ = _named("VX_STRICT_")
    OFF = enum.auto()
    ON = enum.auto()
    GBP = enum.auto()


GBP_G = _v("VX_GBP_G")  # first header byte: a group policy ID is present
GBP_D = _v("VX_GBP_D")  # second byte: don't learn the inner source
GBP_A = _v("VX_GBP_A")  # second byte: policy applied


class Status(enum.IntEnum):
    """Header check of a received payload (``FrameBatch.status``)."""

    _generate_next_value_ = _named("VX_ST_")
    OK = enum.auto()
    TOO_SHORT = enum.auto()
    NO_I_FLAG = enum.auto()
    RESERVED = enum.auto()
    INNER_TOO_SHORT = enum.auto()
    ECN = enum.auto()


class Offload(enum.IntFlag):
    """Per-slot offload state (``FrameBatch.offload``)."""

    _generate_next_value_ = _named("VX_OFF_")
    NEEDS_CSUM = enum.auto()
    CSUM_OK = enum.auto()
    COALESCED = enum.auto()


class Gso(enum.IntFlag):
    """virtio-net GSO types (``FrameBatch.gso_type``)."""

    _generate_next_value_ = _named("VX_GSO_")
    NONE = enum.auto()
    TCPV4 = enum.auto()
    TCPV6 = enum.auto()
    ECN = enum.auto()


class Verdict(enum.IntEnum):
    """``FrameBatch.action`` of a slot the datapath did not handle itself."""

    _generate_next_value_ = _named("VX_")
    UPCALL = enum.auto()
    DROP = enum.auto()


class TxMatch(enum.IntFlag):
    """Match fields of a frame from the device (``vx_rule.tx_up``)."""

    _generate_next_value_ = _named("VX_TXM_")
    GROUP_DST = enum.auto()
    VLAN = enum.auto()
    ARP = enum.auto()
    ND = enum.auto()
    ANY = enum.auto()


class RxMatch(enum.IntFlag):
    """Match fields of a received frame (``vx_rule.rx_up``)."""

    _generate_next_value_ = _named("VX_RXM_")
    GROUP_SRC = enum.auto()
    ZERO_SRC = enum.auto()
    VLAN = enum.auto()
    ANY = enum.auto()


class EntryFlag(enum.IntFlag):
    """What an installed (VNI, MAC) entry lets the datapath do."""

    _generate_next_value_ = _named("VX_EF_")
    ENCAP = enum.auto()
    DELIVER = enum.auto()
    DELIVER_ANY = enum.auto()
    REFRESH = enum.auto()
    STATIC = enum.auto()


class Miss(enum.IntEnum):
    """A segment's rule for a received source MAC without an entry."""

    _generate_next_value_ = _named("VX_MISS_")
    UPCALL = enum.auto()
    DELIVER = enum.auto()
    REFUSE = enum.auto()


class From(enum.IntEnum):
    """Which outer sources the datapath may deliver from (``vx_rule.rx_from``)."""

    _generate_next_value_ = _named("VX_FROM_")
    ANY = enum.auto()
    ALLOWED = enum.auto()
    NONE = enum.auto()


class RxMore(enum.IntEnum):
    """What a receive pump says of its socket and batch: empty, may hold more, or received
    datagrams still wait in the batch (call again with it)."""

    _generate_next_value_ = _named("VX_RX_")
    DRAINED = enum.auto()
    MORE = enum.auto()
    PENDING = enum.auto()


class Held(enum.IntEnum):
    """What the datapath thread holds for the engine: nothing, a TAP's pump, the socket's."""

    _generate_next_value_ = _named("VX_HELD_")
    NONE = enum.auto()
    TX = enum.auto()
    RX = enum.auto()


#: the field names of the per-segment and datapath-wide counter structs, in order
SEG_COUNTERS: tuple[str, ...] = tuple(n for n, _ in ffi.typeof("vx_seg_counters").fields)
DP_COUNTERS: tuple[str, ...] = tuple(n for n, _ in ffi.typeof("vx_dp_counters").fields)
