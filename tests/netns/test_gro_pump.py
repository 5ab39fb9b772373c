"""The C receive pump with UDP_GRO, against the real kernel, inside a namespace (``lo`` up).

A helper script in the namespace sends VXLAN datagrams with ``UDP_SEGMENT`` (each ``sendmsg`` is
one GSO packet, handed whole to a socket with ``UDP_GRO`` on), runs ``Pumps.rx`` on the
receiving socket the way ``Vtep`` does (upcalls to an engine, its frames written with
``batchio.tap_write``) and records what reached the "TAP": one end of a datagram socket pair, so
each write is one message. The inner frames and the expected results are built here with scapy,
independently of the code under test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from scapy.utils import checksum

from vxlanpy import datapath
from vxlanpy.netns import Host, Topology
from vxlanpy.pumps import RX_DRAINED, RX_PENDING

if not datapath.available():
    pytest.skip("the C receive pump needs the cffi backend", allow_module_level=True)

VNI = 4242
MTU = 1450  # the TAP's: coalesced frames get a GSO header with the MSS that fits it
PEER = "02:00:00:00:00:0b"
LOCAL = "02:00:00:00:00:aa"

HELPER = r"""
import json, select, socket, sys, threading, time

from vxlanpy import pumps as pumps_mod
from vxlanpy.batch import FrameBatch
from vxlanpy.datapath import Datapath
from vxlanpy.engine import Engine, SegmentConfig
from vxlanpy.io import batchio
from vxlanpy.stats import GRO_KEYS

SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
UDP_SEGMENT, UDP_GRO = 103, 104
args = json.loads(open(sys.argv[1]).read())
fam, lo = (socket.AF_INET6, "::1") if args["v6"] else (socket.AF_INET, "127.0.0.1")
rx = socket.socket(fam, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 24)
rx.bind((lo, 0))
rx.setsockopt(socket.IPPROTO_UDP, UDP_GRO, 1)
rx.setblocking(False)
tx = socket.socket(fam, socket.SOCK_DGRAM)
tx.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 1 << 24)

# the "TAP": every write is one message, read by a thread so that the writer never blocks
w, r = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
w.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 1 << 24)
got = []
def reader():
    while True:
        m = r.recv(1 << 17)
        if m == b"end":
            return
        got.append(m)
t = threading.Thread(target=reader)
t.start()

e = Engine(backend="cffi")
e.add_segment(SegmentConfig(vni=args["vni"], remotes=[lo], learning=args["learning"],
                            local_mac=bytes.fromhex(args["local"])))
dp = Datapath()
e.attach_datapath(dp)
e.sync_datapath()
dp.set_device(args["vni"], w.fileno(), args["vnet"], args["mtu"])
pumps = pumps_mod.Pumps(dp)
io = batchio.load("cffi")

batch = FrameBatch(args["capacity"], 65535 - 8)
calls = []
now = 1.0
for sends in args["phases"]:  # each: send every run, then pump until drained
    for run in sends:
        payloads = [bytes.fromhex(p) for p in run]
        size = len(payloads[0]).to_bytes(2, sys.byteorder)
        cmsg = [(socket.IPPROTO_UDP, UDP_SEGMENT, size)] if len(payloads) > 1 else []
        tx.sendmsg([b"".join(payloads)], cmsg, 0, rx.getsockname())
    select.select([rx], [], [], 2)
    time.sleep(0.1)
    for _ in range(1000):  # bounded: ends when the pump says the socket is drained
        e.sync_datapath()
        res = pumps.rx(rx.fileno(), batch, now, 16, args["spill"])
        calls.append(list(res))
        if res.n < 0:
            break
        if res.upcalls:
            e.handle_upcalls(batch, now)
            slots = [f.slot for f in e.frames_to_device() if f.slot >= 0]
            io.tap_write(w.fileno(), args["vnet"], args["mtu"], batch, slots)
        if res.more == pumps_mod.RX_DRAINED:
            break
        if res.more == pumps_mod.RX_PENDING and args.get("switch"):
            batch = FrameBatch(args["capacity"], 65535 - 8)  # what waited in the old one is lost
            args["switch"] = False
w.send(b"end")
t.join(10)
g = dp.counters()
print(json.dumps({"calls": calls, "got": [m.hex() for m in got],
                  "gro": {k: g[f] for k, f in GRO_KEYS.items()},
                  "truncated": g["truncated"], "counters": dp.segment_counters(args["vni"]),
                  "drops": e.segment(args["vni"]).counters.to_dict()}))
"""


@pytest.fixture
def ns(topo: Topology) -> Host:
    return topo.add_host("gro")  # lo up, nothing else


def _vxlan(frame: bytes) -> bytes:
    return b"\x08\x00\x00\x00" + VNI.to_bytes(3, "big") + b"\x00" + frame


def _tcp_stream(n: int, mss: int, v6: bool = False, seq: int = 1000) -> list[Packet]:
    """n consecutive ACK segments of one TCP stream (the last with PSH), mss payload bytes."""
    ip = IPv6(src="2001:db8::1", dst="2001:db8::2") if v6 else IP(src="192.0.2.1", dst="192.0.2.2")
    out = []
    for k in range(n):
        flags = "PA" if k == n - 1 else "A"
        payload = bytes((k * 7 + j) & 0xFF for j in range(mss))
        out.append(
            Ether(src=PEER, dst=LOCAL)
            / ip
            / TCP(sport=40000, dport=5001, seq=seq + k * mss, ack=77, flags=flags, window=512)
            / Raw(payload)
        )
    return out


def _udp_frames(n: int, size: int, tag: int) -> list[bytes]:
    """n small UDP frames of one flow: nothing to coalesce."""
    return [
        bytes(
            Ether(src=PEER, dst=LOCAL)
            / IP(src="192.0.2.1", dst="192.0.2.2")
            / UDP(sport=5000 + tag, dport=6000)
            / Raw(bytes([tag, k & 0xFF]) * (size // 2))
        )
        for k in range(n)
    ]


def _run(host: Host, tmp_path: Path, *phases: list[list[bytes]], **kw: Any) -> dict[str, Any]:
    """Run the helper: for each phase, send each run of frames as one GSO packet (a single
    frame: a plain datagram), then pump until the socket is drained."""
    args = {
        "v6": False,
        "vni": VNI,
        "learning": True,
        "local": LOCAL.replace(":", ""),
        "vnet": 10,
        "mtu": MTU,
        "capacity": 64 + 128,
        "spill": 128,
        "phases": [[[_vxlan(f).hex() for f in run] for run in sends] for sends in phases],
        **kw,
    }
    script = tmp_path / "gro_helper.py"
    script.write_text(HELPER)
    inp = tmp_path / "in.json"
    inp.write_text(json.dumps(args))
    out: dict[str, Any] = json.loads(host.sh(sys.executable, str(script), str(inp), timeout=60))
    return out


def _plain_frames(out: dict[str, Any]) -> list[bytes]:
    """The frames written to the TAP, each behind an all-zero virtio-net header (no GSO)."""
    msgs = [bytes.fromhex(m) for m in out["got"]]
    assert all(m[:10] == bytes(10) for m in msgs)
    return [m[10:] for m in msgs]


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_tcp_segments_coalesced_into_one_gso_frame(ns: Host, tmp_path: Path, v6: bool) -> None:
    """40 segments in one GRO receive reach the TAP as ONE frame: the stream's bytes in order,
    a virtio-net GSO header, and a partial checksum the kernel completes to the right one."""
    segs = _tcp_stream(40, 1398, v6=v6)
    # learning off: a MAC the cache does not hold is a fast-path hit
    out = _run(ns, tmp_path, [[bytes(p) for p in segs]], learning=False, v6=v6)
    assert out["gro"] == {"receives": 1, "coalesced": 1, "split": 0, "pending_dropped": 0}
    assert len(out["got"]) == 1, out["calls"]
    msg = bytes.fromhex(out["got"][0])
    vnet, frame = msg[:10], msg[10:]
    flags, gso_type = vnet[0], vnet[1]
    hdr_len, gso_size, csum_start, csum_off = (
        int.from_bytes(vnet[k : k + 2], sys.byteorder) for k in (2, 4, 6, 8)
    )
    l3 = 14
    l4 = l3 + (40 if v6 else 20)
    assert (flags, gso_type) == (1, 4 if v6 else 1)  # NEEDS_CSUM; TCPV6 / TCPV4
    assert (csum_start, csum_off) == (l4, 16)
    assert gso_size == MTU - (l4 - l3) - 20 and hdr_len == l4 + 20
    got = Ether(frame)
    assert got[TCP].seq == 1000 and got[TCP].flags == "PA"
    assert bytes(got[TCP].payload) == b"".join(bytes(p[TCP].payload) for p in segs)
    if v6:
        assert got[IPv6].plen == 20 + 40 * 1398
    else:
        assert got[IP].len == 20 + 20 + 40 * 1398
        again = IP(bytes(got[IP]))
        del again.chksum
        assert IP(bytes(again)).chksum == got[IP].chksum  # a valid IPv4 header checksum
    # CHECKSUM_PARTIAL: the field holds the pseudo-header sum; summing from csum_start and
    # complementing gives the checksum of the whole segment, as scapy computes it
    completed = checksum(frame[csum_start:])
    ref = got.copy()
    del ref[TCP].chksum
    assert completed == Ether(bytes(ref))[TCP].chksum
    assert out["counters"]["rx_packets"] == 1 and out["truncated"] == 0


def test_tcp_segments_split_when_the_tap_takes_no_gso(ns: Host, tmp_path: Path) -> None:
    """Without a virtio-net header the TAP cannot take a super-frame: the receive is split and
    every segment reaches the TAP unchanged, in order."""
    segs = [bytes(p) for p in _tcp_stream(30, 1398)]
    out = _run(ns, tmp_path, [segs], learning=False, vnet=0, mtu=0)
    assert out["gro"] == {"receives": 1, "coalesced": 0, "split": 1, "pending_dropped": 0}
    assert [bytes.fromhex(m) for m in out["got"]] == segs


def test_not_coalescable_split_in_order_with_learning(ns: Host, tmp_path: Path) -> None:
    """Small UDP frames (and a TCP stream with a gap) are split and reach the TAP in wire
    order: through the engine while the peer's MAC is being learned (its first frame goes up,
    and so do its later ones in that batch), from C once it is learned."""
    udp = _udp_frames(50, 60, 1)
    gap = [bytes(p) for p in _tcp_stream(10, 1000)]
    gap = gap[:4] + gap[5:]  # seq jumps: not one stream
    out = _run(ns, tmp_path, [udp, gap], [udp, gap])
    assert out["gro"] == {"receives": 4, "coalesced": 0, "split": 4, "pending_dropped": 0}
    assert _plain_frames(out) == (udp + gap) * 2
    assert out["calls"][0][:2] == [len(udp) + len(gap), len(udp) + len(gap)]  # all went up
    assert out["counters"]["rx_packets"] == len(udp) + len(gap)  # the second time: C hits
    assert sum(c[1] for c in out["calls"]) == len(udp) + len(gap)


def test_splits_past_the_spill_slots_wait_for_the_next_round(ns: Host, tmp_path: Path) -> None:
    """Four receives of 40 datagrams each and room for 60 split datagrams: the pump splits what
    fits, keeps the rest in the batch and finishes them next; nothing is lost or reordered."""
    runs = [_udp_frames(40, 60, tag) for tag in range(4)]
    out = _run(ns, tmp_path, runs, capacity=8 + 60, spill=60)
    assert out["gro"]["split"] == 4 and out["gro"]["pending_dropped"] == 0
    assert _plain_frames(out) == [f for r in runs for f in r]
    assert any(c[3] == RX_PENDING for c in out["calls"]), out["calls"]
    assert out["calls"][-1][3] == RX_DRAINED


def test_a_receive_larger_than_the_spill_slots_is_a_counted_drop(ns: Host, tmp_path: Path) -> None:
    """A receive of more datagrams than the spill slots can ever hold is dropped and counted
    as truncated; the datagrams before and after it are delivered."""
    before, big, after = _udp_frames(1, 60, 1), _udp_frames(30, 60, 2), _udp_frames(1, 60, 3)
    out = _run(ns, tmp_path, [before, big, after], capacity=8 + 16, spill=16)
    assert out["truncated"] == 1
    assert _plain_frames(out) == before + after


def test_pending_receives_in_a_batch_not_handed_back_are_counted(ns: Host, tmp_path: Path) -> None:
    """A caller that moves on to another batch while receives wait in the first loses them:
    counted in pending_dropped, never taken from the new batch's stale slots."""
    runs = [_udp_frames(40, 60, tag) for tag in range(4)]
    out = _run(ns, tmp_path, runs, capacity=8 + 60, spill=60, switch=True)
    assert out["gro"]["pending_dropped"] == 3  # receives 2..4 waited when the batch changed
    assert _plain_frames(out) == runs[0]
    assert out["calls"][-1][3] == RX_DRAINED
