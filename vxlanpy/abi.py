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
from typing import Any

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
):
    _values.update({k: int(v) for k, v in ffi.typeof(f"enum {_name}").relements.items()})


def _v(name: str) -> int:
    return _values[name]


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


class Strict(enum.IntEnum):
    """Header parsing: reserved bits ignored, a drop, or a drop but for the VXLAN-GBP bits."""

    OFF = _v("VX_STRICT_OFF")
    ON = _v("VX_STRICT_ON")
    GBP = _v("VX_STRICT_GBP")


GBP_G = _v("VX_GBP_G")  # first header byte: a group policy ID is present
GBP_D = _v("VX_GBP_D")  # second byte: don't learn the inner source
GBP_A = _v("VX_GBP_A")  # second byte: policy applied


class Status(enum.IntEnum):
    """Header check of a received payload (``FrameBatch.status``)."""

    OK = _v("VX_ST_OK")
    TOO_SHORT = _v("VX_ST_TOO_SHORT")
    NO_I_FLAG = _v("VX_ST_NO_I_FLAG")
    RESERVED = _v("VX_ST_RESERVED")
    INNER_TOO_SHORT = _v("VX_ST_INNER_TOO_SHORT")
    ECN = _v("VX_ST_ECN")


class Offload(enum.IntFlag):
    """Per-slot offload state (``FrameBatch.offload``)."""

    NEEDS_CSUM = _v("VX_OFF_NEEDS_CSUM")
    CSUM_OK = _v("VX_OFF_CSUM_OK")
    COALESCED = _v("VX_OFF_COALESCED")


class Gso(enum.IntFlag):
    """virtio-net GSO types (``FrameBatch.gso_type``)."""

    NONE = _v("VX_GSO_NONE")
    TCPV4 = _v("VX_GSO_TCPV4")
    TCPV6 = _v("VX_GSO_TCPV6")
    ECN = _v("VX_GSO_ECN")


class Verdict(enum.IntEnum):
    """``FrameBatch.action`` of a slot the datapath did not handle itself."""

    UPCALL = _v("VX_UPCALL")
    DROP = _v("VX_DROP")


class TxMatch(enum.IntFlag):
    """Match fields of a frame from the device (``vx_rule.tx_up``)."""

    GROUP_DST = _v("VX_TXM_GROUP_DST")
    VLAN = _v("VX_TXM_VLAN")
    ARP = _v("VX_TXM_ARP")
    ND = _v("VX_TXM_ND")
    ANY = _v("VX_TXM_ANY")


class RxMatch(enum.IntFlag):
    """Match fields of a received frame (``vx_rule.rx_up``)."""

    GROUP_SRC = _v("VX_RXM_GROUP_SRC")
    ZERO_SRC = _v("VX_RXM_ZERO_SRC")
    VLAN = _v("VX_RXM_VLAN")
    ANY = _v("VX_RXM_ANY")


class EntryFlag(enum.IntFlag):
    """What an installed (VNI, MAC) entry lets the datapath do."""

    ENCAP = _v("VX_EF_ENCAP")
    DELIVER = _v("VX_EF_DELIVER")
    DELIVER_ANY = _v("VX_EF_DELIVER_ANY")
    REFRESH = _v("VX_EF_REFRESH")
    STATIC = _v("VX_EF_STATIC")


class Miss(enum.IntEnum):
    """A segment's rule for a received source MAC without an entry."""

    UPCALL = _v("VX_MISS_UPCALL")
    DELIVER = _v("VX_MISS_DELIVER")
    REFUSE = _v("VX_MISS_REFUSE")


class From(enum.IntEnum):
    """Which outer sources the datapath may deliver from (``vx_rule.rx_from``)."""

    ANY = _v("VX_FROM_ANY")
    ALLOWED = _v("VX_FROM_ALLOWED")
    NONE = _v("VX_FROM_NONE")


#: the field names of the per-segment and datapath-wide counter structs, in order
SEG_COUNTERS: tuple[str, ...] = tuple(n for n, _ in ffi.typeof("vx_seg_counters").fields)
DP_COUNTERS: tuple[str, ...] = tuple(n for n, _ in ffi.typeof("vx_dp_counters").fields)
