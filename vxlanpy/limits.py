"""Bounds on what other VTEPs can make a VTEP keep: rate limits and source allowlists. Pure:
time comes in as ``now``.

VXLAN has no authentication: anything that reaches the UDP port can send frames into a segment.
A :class:`RateLimiter` caps how fast one remote VTEP can add MACs to an FDB; an
:class:`Allowlist` says which VTEPs a segment accepts VXLAN from at all.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable, Sequence

__all__ = ["RateLimiter", "Allowlist", "CONFIGURED"]

CONFIGURED = "configured"  # an allowlist of the remotes the configuration names


class RateLimiter:
    """A token bucket per key (a remote VTEP's IP): ``rate`` tokens a second, at most ``burst``
    saved up; ``allow`` takes one. At most ``max_keys`` buckets are kept (the least recently
    used one is forgotten, and starts full when its key comes back), so memory stays bounded
    whatever sources a sender forges. ``rate`` 0: no limit."""

    __slots__ = ("rate", "burst", "_buckets", "_max_keys")

    def __init__(self, rate: float, burst: float | None = None, max_keys: int = 4096) -> None:
        if rate < 0:
            raise ValueError("rate must be >= 0 (0 = no limit)")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate, 1.0))
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max_keys = max_keys

    def allow(self, key: str, now: float) -> bool:
        """True (and one token taken) if ``key`` may act at ``now``."""
        if not self.rate:
            return True
        b = self._buckets.get(key)
        if b is None:
            tokens = self.burst
            if len(self._buckets) >= self._max_keys:
                self._buckets.popitem(last=False)
        else:
            tokens, last = b
            tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
            now = max(now, last)  # a clock that went back does not take tokens away
            self._buckets.move_to_end(key)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def __len__(self) -> int:
        return len(self._buckets)


class Allowlist:
    """The VTEPs a segment accepts VXLAN from: IP networks, and/or the remotes its
    configuration names (its flood list and static FDB entries: :data:`CONFIGURED`)."""

    __slots__ = ("networks", "configured")

    def __init__(self, spec: Sequence[str] | str) -> None:
        items = [spec] if isinstance(spec, str) else list(spec)
        self.configured = CONFIGURED in items
        self.networks = [ipaddress.ip_network(n, strict=False) for n in items if n != CONFIGURED]

    def permits(self, ip: str, configured: Iterable[str] = ()) -> bool:
        """Does the list admit the VTEP ``ip`` (``configured``: the remotes the configuration
        names, when the list includes them)?"""
        addr = ipaddress.ip_address(ip)
        if any(addr in n for n in self.networks):
            return True
        return self.configured and ip in configured

    def __repr__(self) -> str:
        parts = [str(n) for n in self.networks] + ([CONFIGURED] if self.configured else [])
        return f"Allowlist({parts!r})"
