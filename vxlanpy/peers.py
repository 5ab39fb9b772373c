"""Counters per remote VTEP (peer) and batch sizes, kept bounded whatever others send.

The engine counts what it sends to and delivers from each peer (its slow path; the C datapath
counts what it does itself, per peer as well: csrc/table.c ``vx_peer_of``); the Python pumps of
a VTEP without the C datapath count the sizes of the batches they read. Both sides track at
most :data:`MAX_PEERS` addresses one by one (the first ones seen, as C does) and add the
others up under :data:`OTHERS`, so a sender forging source addresses grows nothing.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .abi import BATCH_BUCKETS
from .abi import MAX_PEERS as MAX_PEERS

if TYPE_CHECKING:
    from .fdb import Remote

__all__ = [
    "PeerCounters",
    "BatchSizes",
    "merge_peers",
    "MAX_PEERS",
    "OTHERS",
    "PEER_KEYS",
    "BUCKETS",
]

#: the name of the row that adds up the peers past MAX_PEERS
OTHERS = "other-peers"
#: the counters of one peer, in the order of its row
PEER_KEYS = ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes")
#: batch-size buckets: a batch of n is counted in the first bucket with n <= 2**k
BUCKETS = tuple(1 << k for k in range(BATCH_BUCKETS))


class PeerCounters:
    """Rows of [tx_packets, tx_bytes, rx_packets, rx_bytes] by peer IP (a string). The engine
    adds runs of packets to one peer (:meth:`add`), not each packet."""

    def __init__(self, limit: int = MAX_PEERS) -> None:
        self.limit = limit
        self.rows: dict[str, list[int]] = {}
        self.others = [0, 0, 0, 0]

    def row(self, ip: str) -> list[int]:
        """The row of ``ip``, created while fewer than ``limit`` exist, else the others' row."""
        r = self.rows.get(ip)
        if r is None:
            if len(self.rows) >= self.limit:
                return self.others
            r = self.rows[ip] = [0, 0, 0, 0]
        return r

    def add(self, ip: str, at: int, packets: int, nbytes: int) -> None:
        """Count ``packets`` and ``nbytes`` for ``ip``: sent (``at`` 0) or received (2)."""
        if packets:
            r = self.rows.get(ip) or self.row(ip)
            r[at] += packets
            r[at + 1] += nbytes

    def add_each(self, remotes: Iterable[Remote], packets: int, nbytes: int) -> None:
        """Count ``packets`` and ``nbytes`` sent to each of ``remotes``."""
        if packets:
            for r in remotes:
                self.add(r.ip, 0, packets, nbytes)

    def not_sent(self, by_host: Mapping[str, tuple[int, int]]) -> None:
        """Take back what the kernel refused of what was counted sent (the transport's
        ``unsent_by_host``: packets and inner bytes by destination), as ``Engine.not_sent``."""
        for host, (n, b) in by_host.items():
            self.add(host, 0, -n, -b)

    def to_dict(self) -> dict[str, dict[str, int]]:
        out = {ip: dict(zip(PEER_KEYS, r, strict=True)) for ip, r in self.rows.items()}
        if any(self.others):
            out[OTHERS] = dict(zip(PEER_KEYS, self.others, strict=True))
        return out


def merge_peers(
    parts: Sequence[Mapping[str, Sequence[int]]], limit: int = MAX_PEERS
) -> dict[str, dict[str, int]]:
    """Add up peer tables (the engine's, C's: rows in :data:`PEER_KEYS` order, by IP, maybe an
    :data:`OTHERS` row): at most ``limit`` peers by name, by address (IPv4 first), then the rest
    added up under :data:`OTHERS`."""
    out: dict[str, list[int]] = {}
    others = [0, 0, 0, 0]
    for part in parts:
        for ip, row in part.items():
            have = out.get(ip)
            if have is None:
                have = others if ip == OTHERS or len(out) >= limit else out.setdefault(ip, [0] * 4)
            for k in range(4):
                have[k] += row[k]
    res = {ip: dict(zip(PEER_KEYS, out[ip], strict=True)) for ip in sorted(out, key=_order)}
    if any(others):
        res[OTHERS] = dict(zip(PEER_KEYS, others, strict=True))
    return res


def _order(ip: str) -> tuple[int, bytes]:
    for family, rank in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        try:
            return rank, socket.inet_pton(family, ip)
        except OSError:
            pass
    return 9, ip.encode()


class BatchSizes:
    """How many batches of each size a pump read (buckets of :data:`BUCKETS`), and the frames
    they held in all."""

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.frames = 0

    def add(self, n: int) -> None:
        if n > 0:
            self.counts[min(len(BUCKETS) - 1, (n - 1).bit_length())] += 1
            self.frames += n

    def to_dict(self) -> dict[str, Any]:
        return {
            "sizes": dict(zip(map(str, BUCKETS), self.counts, strict=True)),
            "frames": self.frames,
        }
