"""Prometheus metrics of a running VTEP (``run --metrics ADDR:PORT``, ``metrics = ...``).

Nothing is counted here: at each scrape, :class:`StatsCollector` takes the snapshot ``stats``
answers with (stats.py ``vtep_stats``) and turns it into metric families, so a counter has one
home and the metrics cost nothing until someone scrapes (and nothing at all when off: no
server, no collector). Names follow Prometheus' conventions: ``vxlanpy_`` prefix, base units,
``_total`` on counters, labels for the dimensions (``vni``, ``reason``, ``peer``, ``where``,
``direction``); docs/reference.md lists them, docs/grafana-vxlanpy.json graphs them.

:class:`MetricsServer` serves ``GET /metrics`` over HTTP on the VTEP's own event loop: the
snapshot is taken there, in the thread that owns the engine (nothing is read while it changes),
and written out as text in a worker thread, while the loop goes on forwarding. It holds
up against any client: at most 16 connections, a request head of 8 KiB read within 10 s, one
answer per connection. ``prometheus_client`` is an optional dependency (``pip install
vxlanpy[metrics]``); :func:`require` says so clearly when it is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .io.errqueue import KINDS
from .peers import BUCKETS
from .serving import TaskServer

if TYPE_CHECKING:
    from .tunnel import Vtep

__all__ = ["MetricsError", "StatsCollector", "MetricsServer", "require", "families", "exposition"]

Snapshot = Callable[[], Mapping[str, Any]]

# per-segment counters (segment_stats) -> metric name and help; dropped/drops apart
_SEGMENT = {
    "rx_packets": "frames written to the segment's TAP (by the engine or the C path)",
    "rx_bytes": "inner bytes of those frames",
    "tx_packets": "datagrams sent (a flooded frame once per remote, a TCP super-frame once)",
    "tx_bytes": "inner bytes of those datagrams",
    "floods": "frames sent to the flood list",
    "l2_misses": "unicast frames from the TAP with no FDB entry",
    "l3_misses": "proxied ARP requests for an address not in the neighbour table",
    "arp_proxied": "ARP requests answered by the proxy",
    "learned": "FDB entries learned",
    "moved": "FDB entries moved to another remote",
    "aged": "FDB entries aged out",
    "learn_refused": "learnings refused (max_addresses, max_learned, learn_rate)",
}
_TABLES = {
    "fdb": ("fdb_entries", "unicast FDB entries, static and learned"),
    "learned": ("fdb_learned_entries", "learned FDB entries"),
    "flood": ("flood_remotes", "remotes on the flood list"),
    "neigh": ("neigh_entries", "entries of the neighbour table (ARP proxy)"),
}
_PEER = ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes")
_VTEP = {  # VTEP-wide counters of the snapshot -> (name, help)
    "events_lost": ("events_lost", "events dropped because a queue was full"),
    "checksums_completed": ("checksums_completed", "inner TCP/UDP checksums completed"),
    "gso_frames": ("gso_frames", "TCP super-frames from the TAPs cut into segments"),
    "gso_errors": ("gso_errors", "super-frames that could not be cut (dropped)"),
    "send_thread_frames": ("send_thread_frames", "TCP super-frames the sender thread sent"),
}


class MetricsError(Exception):
    """Metrics cannot be served: prometheus_client missing, or the address cannot be bound."""


def require() -> None:
    """MetricsError, saying how to install it, if prometheus_client is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise MetricsError(
            "--metrics needs the prometheus_client package: pip install 'vxlanpy[metrics]'"
        ) from None


def families(st: Mapping[str, Any]) -> Iterator[Any]:
    """The metric families of one ``stats`` snapshot."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
        return CounterMetricFamily(f"vxlanpy_{name}", doc, labels=list(labels))

    segs = {str(v): c for v, c in st["segments"].items()}
    for key, doc in _SEGMENT.items():
        m = counter(key, doc, ("vni",))
        for vni, c in segs.items():
            m.add_metric([vni], c[key])
        yield m
    m = counter("drops", "packets dropped by vxlanpy's rules, by reason", ("vni", "reason"))
    for vni, c in [*segs.items(), ("none", st["unattributed"])]:
        for reason, n in c["drops"].items():
            m.add_metric([vni, str(reason)], n)
    yield m
    m = counter("losses", "packets lost against vxlanpy's will, by where", ("where",))
    for where, n in st["losses"].items():
        if where != "total":
            m.add_metric([where], n)
    yield m
    fast = counter(
        "fast_path_packets", "packets the C datapath handled itself", ("vni", "direction")
    )
    for vni, c in st.get("fast_path_packets", {}).items():
        for way in ("rx", "tx"):
            fast.add_metric([str(vni), way], c[way])
    yield fast
    for key in _PEER:
        doc = f"per remote VTEP: {key.replace('_', ' ')} (inner), engine and C path"
        m = counter(f"peer_{key}", doc, ("peer",))
        for ip, c in st["peers"].items():
            m.add_metric([ip], c[key])
        yield m
    for key, (name, doc) in _TABLES.items():
        g = GaugeMetricFamily(f"vxlanpy_{name}", doc, labels=["vni"])
        for vni, t in st["tables"].items():
            g.add_metric([str(vni)], t[key])
        yield g
    h = HistogramMetricFamily(
        "vxlanpy_batch_size", "frames per batch the pumps read", labels=["direction"]
    )
    for way, b in st["batches"].items():
        cum, buckets = 0, []
        for le in BUCKETS:
            cum += b["sizes"][str(le)]
            buckets.append((str(le), cum))
        buckets.append(("+Inf", cum))
        h.add_metric([way], buckets, b["frames"])
    yield h
    m = counter("socket_errors", "send/receive errors by errno name", ("error",))
    for name, n in st["socket_errors"].items():
        m.add_metric([name], n)
    yield m
    m = counter("icmp_errors", "ICMP errors about datagrams sent, per remote", ("peer", "kind"))
    for ip, c in st["icmp"].items():
        for kind in KINDS:
            m.add_metric([ip, kind], c.get(kind, 0))
    yield m
    for tap_key, name, doc in (
        ("tap_write_errors", "tap_write_errors", "frames the TAP refused"),
        ("tap_queue_dropped", "tap_queue_dropped", "the TAP's tx_dropped (host sent too fast)"),
    ):
        m = counter(name, doc, ("tap",))
        for tap, n in st[tap_key].items():
            m.add_metric([tap], n)
        yield m
    m = counter("gro", "UDP GRO receives of several datagrams, by what became of them", ("kind",))
    for kind, n in st["gro"].items():
        m.add_metric([kind], n)
    yield m
    for key, (name, doc) in _VTEP.items():
        m = counter(name, doc)
        m.add_metric([], st[key])
        yield m
    g = GaugeMetricFamily("vxlanpy_fast_path", "1 if the C datapath is in use")
    g.add_metric([], int(bool(st["fast_path"])))
    yield g


class StatsCollector:
    """A prometheus_client collector: the families of ``snapshot()`` at each scrape, and how
    long taking the snapshot took (``vxlanpy_scrape_snapshot_seconds``; ``took``: measured by
    the caller, who took it)."""

    def __init__(self, snapshot: Snapshot, took: float | None = None) -> None:
        self.snapshot = snapshot
        self.took = took

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        t0 = time.perf_counter()
        st = self.snapshot()
        took = time.perf_counter() - t0 if self.took is None else self.took
        yield from families(st)
        g = GaugeMetricFamily(
            "vxlanpy_scrape_snapshot_seconds",
            "time the VTEP's event loop spent taking this scrape's snapshot",
        )
        g.add_metric([], took)
        yield g


def exposition(snapshot: Snapshot, process: bool = False, took: float | None = None) -> bytes:
    """The text exposition of ``snapshot`` (and the process' CPU and memory, ``process``)."""
    from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

    reg = CollectorRegistry(auto_describe=False)
    reg.register(StatsCollector(snapshot, took))
    if process:
        ProcessCollector(registry=reg)
    return bytes(generate_latest(reg))


class MetricsServer(TaskServer):
    """``GET /metrics`` for ``vtep`` on ``host:port`` (see the module docstring)."""

    MAX_CLIENTS = 16
    MAX_HEAD = 8192
    TIMEOUT = 10.0

    def __init__(self, vtep: Vtep, host: str, port: int) -> None:
        super().__init__()
        self.vtep = vtep
        self.host, self.port = host, port
        self.scrapes = 0
        self.refused = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def start(self) -> None:
        """Listen; MetricsError if prometheus_client is missing or the address is refused."""
        require()
        try:
            self._server = await asyncio.start_server(
                self._client, self.host, self.port, limit=self.MAX_HEAD
            )
        except OSError as exc:
            raise MetricsError(
                f"metrics: cannot listen on {self.host}:{self.port}: {exc}"
            ) from None
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._stop_serving()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        try:
            if len(self._clients) >= self.MAX_CLIENTS:
                self.refused += 1
                await self._answer(writer, 503, b"too many clients\n")
                return
            if task is not None:
                self._clients.add(task)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.TIMEOUT)
            method, _, rest = head.partition(b" ")
            path = rest.partition(b" ")[0].partition(b"?")[0]
            if method not in (b"GET", b"HEAD"):
                await self._answer(writer, 405, b"only GET\n")
            elif path not in (b"/metrics", b"/"):
                await self._answer(writer, 404, b"see /metrics\n")
            else:
                from prometheus_client import CONTENT_TYPE_LATEST

                # the snapshot on this loop (the engine's thread), the text in a worker: the
                # loop goes on forwarding (the C pumps run without the GIL) while it is written
                t0 = time.perf_counter()
                st = self.vtep.stats()
                took = time.perf_counter() - t0
                body = await asyncio.to_thread(exposition, lambda: st, True, took)
                self.scrapes += 1
                await self._answer(writer, 200, body, CONTENT_TYPE_LATEST, method == b"HEAD")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            with contextlib.suppress(ConnectionError, TimeoutError):
                await self._answer(writer, 400, b"bad request\n")
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.transport.abort() if writer.transport.get_write_buffer_size() else writer.close()

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        code: int,
        body: bytes,
        ctype: str = "text/plain; charset=utf-8",
        head_only: bool = False,
    ) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
        status = f"HTTP/1.1 {code} {reason.get(code, 'Service Unavailable')}\r\n"
        hdr = f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        writer.write((status + hdr).encode() + (b"" if head_only else body))
        await asyncio.wait_for(writer.drain(), self.TIMEOUT)
