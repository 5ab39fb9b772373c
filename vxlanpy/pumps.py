"""The C pumps: device -> wire and wire -> device in one C call per batch, on a Datapath.

Each pump does the I/O (csrc/tap.c, udp.c) around the datapath's matching (tx.c, rx.c) and
executes the installed actions itself; what matched nothing is left in the batch marked as an
upcall for the engine. The optional sender thread (csrc/sender.c) sends TCP super-frames from a
second core; busy polling trades a core for latency.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

from .abi import Held, RxMore
from .batch import FrameBatch
from .datapath import Datapath, _ms

__all__ = ["Pumps", "RxPump", "LoopHeld", "RX_DRAINED", "RX_MORE", "RX_PENDING"]

RX_DRAINED, RX_MORE, RX_PENDING = RxMore.DRAINED, RxMore.MORE, RxMore.PENDING  # RxPump.more


class RxPump(NamedTuple):
    """What one ``rx`` call did: ``n`` datagrams in the last batch (``-errno`` on error),
    ``upcalls`` among them, ``gone`` the VNI whose TAP is gone (-1), ``more``: RX_DRAINED,
    RX_MORE (the socket may hold more) or RX_PENDING (datagrams received but not yet handled
    wait in the batch: call again with it)."""

    n: int
    upcalls: int
    gone: int
    more: int


class LoopHeld(NamedTuple):
    """What the datapath thread holds for the engine: the pump of TAP ``vni`` (Held.TX)
    returned ``n`` with ``upcalls`` marked, or the socket's (Held.RX) returned
    ``RxPump(n, upcalls, gone, more)``."""

    kind: Held
    vni: int
    n: int
    upcalls: int
    more: int
    gone: int

    def rx(self) -> RxPump:
        return RxPump(self.n, self.upcalls, self.gone, self.more)


class Pumps:
    """The pumps of one datapath (call them from one thread: the event loop's)."""

    def __init__(self, datapath: Datapath) -> None:
        self.datapath = datapath
        self._lib = datapath.mod.lib
        self._ffi = datapath.mod.ffi
        self._dp = datapath.dp
        self._u32 = self._ffi.new("uint32_t[2]")
        self._i64 = self._ffi.new("int64_t[1]")
        self._thread_batches: tuple[FrameBatch, FrameBatch] | None = None  # the thread's

    def start_sender(self) -> None:
        """Send super-frames from a C thread of their own (device -> wire as a pipeline: this
        thread reads and cuts, that one sends). Raises OSError if the thread cannot start."""
        r = int(self._lib.vx_sender_start(self._dp))
        if r < 0:
            raise OSError(-r, f"cannot start the sender thread: {os.strerror(-r)}")

    def sender_sent(self) -> int | None:
        """Super-frames the sender thread has sent; None if there is no sender thread."""
        n = int(self._lib.vx_sender_sent(self._dp))
        return None if n < 0 else n

    def tx(self, vni: int, batch: FrameBatch, rounds: int) -> tuple[int, int]:
        """Read the TAP of ``vni`` and forward what matches, up to ``rounds`` batches while
        nothing needs the engine. Returns (frames in ``batch`` now, upcalls among them); frames
        < 0 is ``-errno`` (the TAP is gone)."""
        b = self.datapath.cbatch(batch)
        n = int(self._lib.vx_tx_pump(self._dp, vni, b, rounds, self._u32))
        batch.count = max(n, 0)
        return n, int(self._u32[0])

    def rx(self, fd: int, batch: FrameBatch, now: float, rounds: int, spill: int = 0) -> RxPump:
        """Receive from the UDP socket ``fd`` (into slots ``0..capacity - spill - 1``) and
        deliver what matches to the TAPs, up to ``rounds`` batches while nothing needs the
        engine (1: every batch comes back, for a tracer). A UDP GRO receive (the socket has
        ``UDP_GRO`` on) is coalesced into one TCP super-frame where it can be, else split into
        its datagrams, which take the last ``spill`` slots. The datagrams of the last batch
        are ``batch.order[:n]``, in wire order; ``batch.count`` is set to ``n``."""
        b = self.datapath.cbatch(batch)
        n = int(
            self._lib.vx_rx_pump(self._dp, fd, b, _ms(now), rounds, spill, self._u32, self._i64)
        )
        batch.count = max(n, 0)
        return RxPump(n, int(self._u32[0]), int(self._i64[0]), int(self._u32[1]))

    # --- the datapath thread (csrc/loop.c) ------------------------------------------------

    def start_thread(
        self,
        taps: Mapping[int, int],
        udp_fd: int,
        tx: FrameBatch,
        rx: FrameBatch,
        rounds: int,
        spill: int,
        busy_usec: int = 0,
        adaptive_usec: int = 0,
    ) -> int:
        """Run the pumps on a C thread of their own: it polls the TAPs (``taps``: VNI -> fd)
        and the socket, moves what has an installed action, and holds the rest for the engine
        (read it with ``held``, then ``release``). ``tx`` and ``rx`` are the batches it pumps
        with: while it runs, they are the thread's but while something is held. Returns the
        descriptor that is readable when something is held. After work it polls without
        sleeping for ``busy_usec`` µs, and for ``adaptive_usec`` µs while the work comes closer
        together than that. Raises OSError."""
        fds = self._ffi.new("int[]", list(taps.values()))
        vnis = self._ffi.new("uint32_t[]", list(taps))
        d = self.datapath
        r = int(
            self._lib.vx_loop_start(
                self._dp, fds, vnis, len(taps), udp_fd, d.cbatch(tx), d.cbatch(rx),
                rounds, spill, busy_usec, adaptive_usec,
            )
        )  # fmt: skip
        if r < 0:
            raise OSError(-r, f"cannot start the datapath thread: {os.strerror(-r)}")
        self._thread_batches = (tx, rx)
        return int(self._lib.vx_loop_notify_fd(self._dp))

    @property
    def threaded(self) -> bool:
        """True while the datapath thread runs."""
        return bool(self._lib.vx_loop_running(self._dp))

    def held(self) -> LoopHeld | None:
        """What the datapath thread holds for the engine (it waits meanwhile), or None; the
        batch it pumped has its ``count`` set, as ``tx`` and ``rx`` set it."""
        h = self._ffi.new("vx_loop_held *")
        if not self._lib.vx_loop_held_get(self._dp, h):
            return None
        assert self._thread_batches is not None  # the thread runs: start_thread set them
        tx, rx = self._thread_batches
        (tx if h.kind == Held.TX else rx).count = max(int(h.n), 0)
        return LoopHeld(Held(h.kind), int(h.vni), int(h.n), int(h.upcalls), int(h.more),
                        int(h.gone))  # fmt: skip

    def release(self) -> None:
        """The engine is done with what was held: the thread polls again."""
        self._lib.vx_loop_release(self._dp)

    def stop_thread(self) -> None:
        """End the datapath thread (what it holds stays in the batches)."""
        self._lib.vx_loop_stop(self._dp)

    def spin(self, fds: list[int], usec: int) -> bool:
        """Busy-poll ``fds`` (at most 16) for up to ``usec`` µs without sleeping (the GIL is
        released); True as soon as one is readable."""
        r = int(self._lib.vx_spin(fds, len(fds), usec))
        if r < 0:
            raise OSError(-r, os.strerror(-r))
        return r > 0
