"""Per-peer counters, batch sizes and the Prometheus exposition, without root.

Two VTEPs on loopback with in-memory devices (as test_memory_vtep.py) exchange frames through
the C pumps and the Python path; their ``stats`` must count every frame per peer, and the
exposition (metrics.py) must say what ``stats`` says, parsed back with prometheus_client's own
parser. The bounds: a flood of forged sources fills the peer tables up to their cap and no
further, in C and in the engine. The HTTP server answers scrapes and refuses the rest.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_memory_vtep import A_IP, B_IP, FAST, MAC_A, MAC_B, VNI, _got, _udp, pair

from vxlanpy import datapath, metrics
from vxlanpy.batch import FrameBatch
from vxlanpy.cli import top
from vxlanpy.config import ConfigError, parse_listen
from vxlanpy.datapath import Datapath, set_source
from vxlanpy.engine import Engine, SegmentConfig
from vxlanpy.metrics import MetricsError, MetricsServer, exposition
from vxlanpy.peers import MAX_PEERS, OTHERS, BatchSizes, PeerCounters, merge_peers
from vxlanpy.stats import peer_stats
from vxlanpy.tunnel import Vtep
from vxlanpy.wire import encode_header

LOCAL = bytes([2, 0, 0, 0, 0, 0xAA])
DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana-vxlanpy.json"


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition by (name, sorted labels)."""
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def _exchange(a: Vtep, ta: Any, b: Vtep, tb: Any, n: int) -> None:
    ta.inject(_udp(MAC_A, "ff:ff:ff:ff:ff:ff", 0))
    assert len(await _got(tb)) == 1
    tb.inject(_udp(MAC_B, MAC_A, 1))
    assert len(await _got(ta)) == 1
    for k in range(n):
        ta.inject(_udp(MAC_A, MAC_B, 2 + k))
    assert len(await _got(tb)) == n


@pytest.mark.parametrize("fast", FAST, ids=lambda f: "c-pumps" if f else "python")
def test_peers_batches_and_exposition(fast: bool) -> None:
    async def main() -> None:
        async with pair(fast) as (a, ta, b, tb):
            await _exchange(a, ta, b, tb, 50)
            sa, sb = a.stats(), b.stats()
            frame_len = len(_udp(MAC_A, MAC_B, 0))
            # A sent the broadcast and 50 unicast frames to B; B delivered all 51 from A
            assert sa["peers"][B_IP]["tx_packets"] == 51
            assert sa["peers"][B_IP]["tx_bytes"] == 51 * frame_len
            assert sb["peers"][A_IP]["rx_packets"] == 51
            assert sb["peers"][A_IP]["rx_bytes"] == 51 * frame_len
            assert sa["peers"][B_IP]["rx_packets"] == 1 and sb["peers"][A_IP]["tx_packets"] == 1
            assert OTHERS not in sa["peers"]
            seg = sb["segments"][VNI]
            assert sum(p["rx_packets"] for p in sb["peers"].values()) == seg["rx_packets"]
            if fast:  # most of them were C's: counted per peer in C
                assert sb["fast_path_packets"][VNI]["rx"] >= 49
                assert a.engine.datapath is not None
                assert a.engine.datapath.peers()[B_IP][0] >= 49
            else:
                assert sb["fast_path_packets"] == {}
            # every frame read from the TAP was in one batch or another, each counted once
            tx = sa["batches"]["tx"]
            assert tx["frames"] == 51 and sum(tx["sizes"].values()) <= 51
            rx = sb["batches"]["rx"]["frames"]  # receives: UDP GRO ones hold several
            assert rx == 51 if not fast else 1 <= rx <= 51
            assert sa["tables"][VNI] == {"fdb": 1, "learned": 1, "flood": 1, "neigh": 0}

            got = samples(exposition(b.stats))
            vni = (("vni", str(VNI)),)
            assert got[("vxlanpy_rx_packets_total", vni)] == seg["rx_packets"] == 51
            assert got[("vxlanpy_peer_rx_packets_total", (("peer", A_IP),))] == 51
            assert got[("vxlanpy_fdb_entries", vni)] == 1
            count = got[("vxlanpy_batch_size_count", (("direction", "rx"),))]
            assert count == sum(sb["batches"]["rx"]["sizes"].values()) > 0
            inf = got[("vxlanpy_batch_size_bucket", (("direction", "rx"), ("le", "+Inf")))]
            assert inf == count
            assert got[("vxlanpy_fast_path", ())] == int(fast)

    asyncio.run(main())


def test_drops_and_losses_are_exposed() -> None:
    e = Engine()
    e.add_segment(SegmentConfig(vni=VNI, local_mac=LOCAL))
    e.handle_datagram(b"\x00" * 4, "198.18.0.9", 1.0)  # too short: before a VNI is known
    e.handle_frame(VNI, bytes(6) + LOCAL + b"\x08\x00" + bytes(30), 1.0)  # no destination
    st = {
        "segments": {VNI: {**e.segment(VNI).counters.to_dict()}},
        "unattributed": e.counters.to_dict(),
        "losses": {"send": 3, "tap_queue": 0, "total": 3},
        "fast_path_packets": {},
        "peers": {},
        "tables": {},
        "batches": {"tx": BatchSizes().to_dict()},
        "socket_errors": {"EAGAIN": 3},
        "icmp": {},
        "tap_write_errors": {"vx0": 0},
        "tap_queue_dropped": {"vx0": 0},
        "gro": {"receives": 0},
        "events_lost": 0,
        "checksums_completed": 0,
        "gso_frames": 0,
        "gso_errors": 0,
        "send_thread_frames": 0,
        "fast_path": False,
    }
    got = samples(exposition(lambda: st))
    drops = "vxlanpy_drops_total"
    assert got[(drops, (("reason", "too-short"), ("vni", "none")))] == 1
    assert got[(drops, (("reason", "no-destination"), ("vni", str(VNI))))] == 1
    assert got[("vxlanpy_losses_total", (("where", "send"),))] == 3
    assert ("vxlanpy_losses_total", (("where", "total"),)) not in got  # a sum, not a place
    assert got[("vxlanpy_socket_errors_total", (("error", "EAGAIN"),))] == 3


def test_peer_tables_are_bounded() -> None:
    pc = PeerCounters(limit=3)
    for k in range(10):
        r = pc.rows.get(f"198.18.1.{k}") or pc.row(f"198.18.1.{k}")
        r[2] += 1
    d = pc.to_dict()
    assert len(d) == 4 and d[OTHERS]["rx_packets"] == 7
    rows = {**pc.rows, OTHERS: pc.others}
    merged = merge_peers([rows, {"198.18.2.1": [5, 0, 0, 0]}], limit=3)
    assert len(merged) == 4 and merged[OTHERS] == {
        "tx_packets": 5,
        "tx_bytes": 0,
        "rx_packets": 7,
        "rx_bytes": 0,
    }


@pytest.mark.skipif(not datapath.available(), reason="the C datapath needs the cffi backend")
def test_c_peer_table_is_bounded_under_forged_sources() -> None:
    """Learning off: C delivers from any source; 1100 forged sources fill MAX_PEERS rows and
    the rest is added up in the others' row, nothing lost, nothing grown."""
    e = Engine(backend="cffi")
    e.add_segment(SegmentConfig(vni=VNI, local_mac=LOCAL, learning=False))
    dp = Datapath()
    e.attach_datapath(dp)
    payload = encode_header(VNI) + LOCAL + bytes([2, 0, 0, 0, 0, 1]) + b"\x08\x00" + bytes(46)
    sources = [f"198.18.{k // 250}.{k % 250 + 1}" for k in range(MAX_PEERS + 76)]
    b = FrameBatch(64, 256)
    for first in range(0, len(sources), 64):
        b.clear()
        for k, src in enumerate(sources[first : first + 64]):
            b.append_payload(payload)
            set_source(b, k, src)
        assert dp.rx_classify(b, 1.0) == b.count
    rows = dp.peers()
    assert len(rows) == MAX_PEERS + 1
    assert rows[""] == (0, 0, 76, 76 * (len(payload) - 8))
    assert sum(r[2] for r in rows.values()) == len(sources)
    st = peer_stats(e)
    assert len(st) == MAX_PEERS + 1 and st[OTHERS]["rx_packets"] == 76


def test_metrics_address_is_checked() -> None:
    assert parse_listen("127.0.0.1:9477") == ("127.0.0.1", 9477)
    assert parse_listen("[::1]:9477") == ("::1", 9477)
    for bad in ("127.0.0.1", "localhost:9477", "::1:9477", "127.0.0.1:0", "1.2.3.4:x", 9477):
        with pytest.raises(ConfigError, match="ADDR:PORT"):
            parse_listen(bad)


def test_server_answers_scrapes_and_refuses_the_rest() -> None:
    async def get(port: int, request: bytes) -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(request)
        data = await asyncio.wait_for(r.read(), 5)
        w.close()
        return data

    async def main() -> None:
        async with pair(False) as (a, ta, b, tb):
            await _exchange(a, ta, b, tb, 3)
            server = MetricsServer(b, "127.0.0.1", 0)
            await server.start()
            try:
                ok = await get(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                head, _, body = ok.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 ")
                vni = (("vni", str(VNI)),)
                assert samples(body)[("vxlanpy_rx_packets_total", vni)] == 4
                assert b"process_cpu_seconds_total" in body
                assert (await get(server.port, b"GET /x HTTP/1.1\r\n\r\n")).startswith(
                    b"HTTP/1.1 404"
                )
                assert (await get(server.port, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(
                    b"HTTP/1.1 405"
                )
                long = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n"
                assert (await get(server.port, long)).startswith(b"HTTP/1.1 400")
                assert server.scrapes == 1
            finally:
                await server.close()

    asyncio.run(main())


def dashboard_metrics() -> set[str]:
    """The metric names docs/grafana-vxlanpy.json queries (panels and variables)."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return set(re.findall(r"\b((?:vxlanpy|process)_[a-z_]+)\b", " ".join(exprs)))


def test_dashboard_queries_only_exposed_metrics() -> None:
    """Every metric the dashboard queries has samples in a live VTEP's exposition (C pumps
    where built: the fast-path share needs them), and every panel has a query."""
    dash = json.loads(DASHBOARD.read_text())
    assert dash["panels"] and all(p["targets"] for p in dash["panels"])

    async def main() -> set[str]:
        async with pair(FAST[0]) as (a, ta, b, tb):
            await _exchange(a, ta, b, tb, 5)
            text = exposition(b.stats, process=True)
            # samples, and the families without any yet (no drop so far): their HELP lines
            helped = {ln.split()[2] for ln in text.decode().splitlines() if ln[:6] == "# HELP"}
            return {name for name, _labels in samples(text)} | helped

    exposed = asyncio.run(main())
    wanted = dashboard_metrics()
    assert "vxlanpy_rx_packets_total" in wanted and "vxlanpy_batch_size_bucket" in wanted
    assert not wanted - exposed, wanted - exposed


def _st(rx: int, tx: int, drops: int, peer_rx: int) -> dict[str, Any]:
    seg = {"rx_packets": rx, "rx_bytes": 100 * rx, "tx_packets": tx, "tx_bytes": 100 * tx}
    seg |= {"dropped": drops, "drops": {"no-destination": drops} if drops else {}}
    peer = {"tx_packets": tx, "tx_bytes": 100 * tx, "rx_packets": peer_rx, "rx_bytes": 0}
    return {
        "segments": {"42": seg},
        "unattributed": {"drops": {}},
        "peers": {"198.18.0.2": peer},
        "tables": {"42": {"fdb": 3}},
        "fast_path_packets": {"42": {"rx": rx // 2, "tx": tx // 2}},
        "losses": {"total": 0},
    }


def test_top_rates() -> None:
    r = top.rates(_st(10, 20, 0, 10), _st(30, 60, 4, 30), 2.0)
    s = r["segments"]["42"]
    assert s["rx_packets_s"] == 10.0 and s["tx_packets_s"] == 20.0
    assert s["rx_bits_s"] == 8 * 100 * 10.0 and s["drops_s"] == 2.0 and s["fdb"] == 3
    assert s["fast_path_share"] == 0.5
    assert r["peers"]["198.18.0.2"]["rx_packets_s"] == 10.0
    assert r["drops"] == {"no-destination": {"total": 4, "per_s": 2.0}}
    back = top.rates(_st(30, 60, 4, 30), _st(0, 0, 0, 0), 1.0)  # counters went back: no negatives
    assert all(v >= 0 for v in back["segments"]["42"].values() if isinstance(v, float))
    assert back["segments"]["42"]["fast_path_share"] is None
    text = top.render(r)
    assert "42" in text and "198.18.0.2" in text and "no-destination" in text


def test_missing_prometheus_client_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    with pytest.raises(MetricsError, match=r"pip install 'vxlanpy\[metrics\]'"):
        metrics.require()
