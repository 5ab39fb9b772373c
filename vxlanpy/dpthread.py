"""Who waits for the TAPs and the socket: the C datapath thread, or the event loop.

With the C fast path, the pumps run on a thread of their own (csrc/loop.c, started through
:meth:`Pumps.start_thread`): it sleeps in epoll_wait(2), moves what has an installed action without
the interpreter, and *holds* what the engine must see (upcalls, errors, a TAP that is gone,
datagrams still waiting in the batch). A held pump makes this module's descriptor readable;
the event loop then runs the Vtep's own pump code on that result (the thread parked, the
batches the engine's), and releases the thread when it is done.

Without the thread (``datapath_thread`` off, no C datapath, or while something traces: a
tracer sees every batch, which the event loop's pumps give it), the event loop has a reader on
each TAP and on the socket, as before. :meth:`Readers.sync` switches between the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from .abi import Held
from .pumps import RX_PENDING, LoopHeld

if TYPE_CHECKING:
    from .tunnel import Vtep

__all__ = ["Readers"]

log = logging.getLogger("vxlanpy")


class Readers:
    """The readers of one Vtep: the datapath thread's descriptor or the event loop's."""

    def __init__(self, vtep: Vtep, rounds: int) -> None:
        self._vtep = vtep
        self._rounds = rounds
        self._loop_readers = False  # the event loop reads the TAPs and the socket
        self._notify: int | None = None  # the datapath thread runs; its descriptor
        self._resuming = False  # held datagrams are being finished on the event loop
        self._sync_due = False  # an install into the datapath is scheduled
        self.at_close = False  # the thread ran when the readers were closed

    @property
    def threaded(self) -> bool:
        """True while the datapath thread waits for the TAPs and the socket."""
        return self._notify is not None

    def sync(self) -> None:
        """The datapath thread if it may run (C pumps, ``datapath_thread`` on, no tracer),
        else the event loop's readers."""
        v = self._vtep
        want = (
            v.pumps is not None
            and v.config.datapath_thread
            and v.engine.tracer is None
            and not v.stopping
        )
        if want and not self.threaded:
            self._remove_loop_readers()
            if not self._start_thread():
                self._add_loop_readers()
        elif not want:
            self._stop_thread()
            if not v.stopping:
                self._add_loop_readers()

    def close(self) -> None:
        """No more reading: the thread ended (what it held handed to no one), readers gone."""
        self.at_close = self.at_close or self.threaded
        self._stop_thread(finish=False)
        self._remove_loop_readers()

    # --- the datapath thread ------------------------------------------------------------------

    def _start_thread(self) -> bool:
        v = self._vtep
        assert v.pumps is not None and v.transport is not None and v._loop is not None
        assert v._tx_batch is not None and v._rx_batch is not None
        taps = {vni: t.fd for vni, t in v.taps.items()}
        # the event loop's pumps install what changed before each call; with the thread,
        # the engine's changes are installed as they come (ageing, the control socket, API)
        v.engine.sync_datapath()
        v.engine.on_datapath_change(self._changed)
        try:
            fd = v.pumps.start_thread(
                taps, v.transport.fileno(), v._tx_batch, v._rx_batch, self._rounds,
                v._rx_spill, v.config.busy_poll, v.config.adaptive_poll,
            )  # fmt: skip
        except OSError as exc:
            v.engine.on_datapath_change(None)
            log.warning("%s; the event loop polls the TAPs and the socket", exc)
            return False
        self._notify = fd
        v._loop.add_reader(fd, self._on_held)
        return True

    def _stop_thread(self, finish: bool = True) -> None:
        v = self._vtep
        fd, self._notify = self._notify, None
        if fd is None or v.pumps is None:
            return
        if v._loop is not None:
            with contextlib.suppress(Exception):
                v._loop.remove_reader(fd)
        held = v.pumps.held() if finish and not self._resuming else None
        v.pumps.stop_thread()
        v.engine.on_datapath_change(None)
        if held is not None:  # the engine's now: what the thread held is handled here
            self._run(held)

    def _changed(self) -> None:
        if not self._sync_due and self._vtep._loop is not None:
            self._sync_due = True
            self._vtep._loop.call_soon(self._sync_now)

    def _sync_now(self) -> None:
        self._sync_due = False
        v = self._vtep
        if self.threaded and not v.stopping:
            v.engine.sync_datapath()  # parks the thread while it installs

    def _on_held(self) -> None:
        v = self._vtep
        if v.pumps is None or self._resuming:
            return
        held = v.pumps.held()
        if held is None:
            return
        if self._run(held) and self.threaded and not v.stopping:
            v.pumps.release()

    def _run(self, held: LoopHeld) -> bool:
        """Run the Vtep's pump on what the thread held; False if datagrams still wait in the
        batch (finished from the event loop, then the thread is released)."""
        v = self._vtep
        assert v._tx_batch is not None and v._rx_batch is not None
        if held.kind == Held.TX:
            tap = v.taps.get(held.vni)
            assert tap is not None
            v._pump_tap(held.vni, tap, v._tx_batch, first=(held.n, held.upcalls))
            return True
        if v._pump_udp(v._rx_batch, first=held.rx()) != RX_PENDING or not self.threaded:
            return True  # (without the thread, the Vtep finishes them itself)
        self._resuming = True
        assert v._loop is not None
        v._loop.call_soon(self._resume)
        return False

    def _resume(self) -> None:
        """Datagrams a held receive left in the batch: pumped from here until none wait."""
        v = self._vtep
        if v.stopping or v._rx_batch is None:
            self._resuming = False
            return
        if v._pump_udp(v._rx_batch) == RX_PENDING:
            assert v._loop is not None
            v._loop.call_soon(self._resume)
            return
        self._resuming = False
        if self.threaded and v.pumps is not None:
            v.pumps.release()

    # --- the event loop's readers -------------------------------------------------------------

    def _add_loop_readers(self) -> None:
        v = self._vtep
        if self._loop_readers or v._loop is None or v.transport is None:
            return
        for vni, tap in v.taps.items():
            v._loop.add_reader(tap.fd, v._on_tap, vni)
        v._loop.add_reader(v.transport.fileno(), v._on_udp)
        self._loop_readers = True

    def _remove_loop_readers(self) -> None:
        v = self._vtep
        if not self._loop_readers or v._loop is None:
            return
        self._loop_readers = False
        loop: asyncio.AbstractEventLoop = v._loop
        for tap in v.taps.values():
            if not tap.closed:
                with contextlib.suppress(Exception):
                    loop.remove_reader(tap.fd)
        if v.transport is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(v.transport.fileno())
