"""The sans-I/O engine, end to end: VTEPs linked in memory, no sockets (aioquic style).

Each :class:`Vtep` is an :class:`Engine` plus the underlay IP it sends from and a list of the
frames it wrote to its device. :func:`transfer` moves what one engine wants to send into the
engine at each datagram's destination, exactly as the UDP socket would. Frames are built with
scapy (Ether/ARP/IP/ICMP/TCP) and, where a datagram is checked, scapy is the oracle for the
RFC 7348 header: ``UDP()/VXLAN(flags=0x08, vni=...)/frame``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet

from vxlanpy import wire
from vxlanpy.batch import FrameBatch
from vxlanpy.engine import Counters, Datagram, Engine, Segment, SegmentConfig
from vxlanpy.events import (
    Dropped,
    Event,
    L2Miss,
    L3Miss,
    LearnRefused,
    MacAged,
    MacLearned,
    MacMoved,
)
from vxlanpy.fdb import Remote
from vxlanpy.wire import VXLAN_PORT, DropReason, parse_mac

BACKENDS = ["cffi", "python"]
backends = pytest.mark.parametrize("backend", BACKENDS)

VNI = 4242

# underlay (VTEP) addresses: RFC 2544 benchmarking space, as in the brief
A_IP, B_IP, C_IP = "198.18.0.1", "198.18.0.2", "198.18.0.3"
# overlay hosts behind each VTEP
HA, HB, HC = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
HA_IP, HB_IP, HC_IP = "198.19.0.1", "198.19.0.2", "198.19.0.3"
BCAST = "ff:ff:ff:ff:ff:ff"


def mac(text: str) -> bytes:
    return parse_mac(text)


# --- frames as the hosts would send them ------------------------------------------------------


def arp_request(src_mac: str, src_ip: str, target_ip: str) -> Packet:
    return Ether(dst=BCAST, src=src_mac) / ARP(
        op="who-has", hwsrc=src_mac, psrc=src_ip, hwdst="00:00:00:00:00:00", pdst=target_ip
    )


def arp_reply(src_mac: str, src_ip: str, dst_mac: str, dst_ip: str) -> Packet:
    return Ether(dst=dst_mac, src=src_mac) / ARP(
        op="is-at", hwsrc=src_mac, psrc=src_ip, hwdst=dst_mac, pdst=dst_ip
    )


def icmp(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, seq: int = 1) -> Packet:
    return (
        Ether(dst=dst_mac, src=src_mac)
        / IP(src=src_ip, dst=dst_ip)
        / ICMP(type="echo-request", id=7, seq=seq)
        / (b"ping" * 8)
    )


def tcp(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, sport: int = 40000) -> Packet:
    return (
        Ether(dst=dst_mac, src=src_mac)
        / IP(src=src_ip, dst=dst_ip)
        / TCP(sport=sport, dport=443, flags="PA", seq=1000)
        / b"GET / HTTP/1.1\r\n\r\n"
    )


def vxlan_payload(frame: Packet | bytes, vni: int, sport: int = 49152, dport: int = 4789) -> bytes:
    """scapy's idea of the UDP payload that carries ``frame`` on ``vni`` (RFC 7348 header)."""
    inner = frame if isinstance(frame, Packet) else Ether(frame)
    udp = raw(UDP(sport=sport, dport=dport) / VXLAN(flags=0x08, vni=vni) / inner)
    return udp[8:]


# --- VTEPs in memory --------------------------------------------------------------------------


class Vtep:
    """An engine, the underlay IP it sends from, and what it wrote to its device."""

    def __init__(
        self, ip: str, backend: str, engine_kw: dict[str, Any] | None = None, **segment_kw: Any
    ) -> None:
        self.ip = ip
        self.engine = Engine(backend=backend, **(engine_kw or {}))
        segment_kw.setdefault("vni", VNI)
        self.seg: Segment = self.engine.add_segment(SegmentConfig(**segment_kw))
        self.device: list[bytes] = []

    def send(self, frame: Packet | bytes, now: float = 0.0, vni: int = VNI) -> None:
        """The host behind this VTEP puts ``frame`` on the segment's device."""
        self.engine.handle_frame(vni, raw(frame) if isinstance(frame, Packet) else frame, now)
        self.collect()

    def collect(self) -> None:
        for f in self.engine.frames_to_device():
            self.device.append(bytes(f.frame))

    def take_device(self) -> list[bytes]:
        out, self.device = self.device, []
        return out

    def events(self) -> list[Event]:
        return list(self.engine.events())


def transfer(sender: Vtep, network: Iterable[Vtep], now: float = 0.0) -> list[Datagram]:
    """Deliver ``sender``'s pending datagrams to the VTEPs they are addressed to.

    Returns the datagrams (payloads as bytes). A datagram to an address no VTEP owns (a
    multicast group, say) is returned but goes nowhere.
    """
    by_ip = {v.ip: v for v in network}
    sent = [d._replace(payload=bytes(d.payload)) for d in sender.engine.datagrams_to_send()]
    for d in sent:
        peer = by_ip.get(d.host)
        if peer is not None:
            peer.engine.handle_datagram(d.payload, sender.ip, now)
            peer.collect()
    return sent


def three_vteps(backend: str, **segment_kw: Any) -> tuple[Vtep, Vtep, Vtep]:
    a = Vtep(A_IP, backend, remotes=(B_IP, C_IP), **segment_kw)
    b = Vtep(B_IP, backend, remotes=(A_IP, C_IP), **segment_kw)
    c = Vtep(C_IP, backend, remotes=(A_IP, B_IP), **segment_kw)
    return a, b, c


def drops(counters: Counters) -> dict[str, int]:
    return {r.value: n for r, n in counters.drops.items() if n}


# --- (a) flood, learn, then unicast ----------------------------------------------------------


@backends
def test_arp_floods_reply_unicasts_and_both_sides_learn(backend: str) -> None:
    a, b, c = three_vteps(backend)
    net = (a, b, c)
    now = 10.0

    # Host A asks for host B: broadcast, replicated to both other VTEPs.
    request = arp_request(HA, HA_IP, HB_IP)
    a.send(request, now)
    sent = transfer(a, net, now)
    assert sorted(d.host for d in sent) == [B_IP, C_IP]
    for d in sent:
        assert d.port == VXLAN_PORT and d.vni == VNI
        assert 49152 <= d.sport <= 65535
        assert d.sport == wire.source_port(raw(request))
        assert d.payload == vxlan_payload(request, VNI, d.sport)
    assert a.seg.counters.floods == 1
    assert a.events() == []  # a broadcast is no L2 miss

    # B's and C's devices got the request unchanged, and both learned A's MAC behind A_IP.
    assert b.take_device() == [raw(request)]
    assert c.take_device() == [raw(request)]
    assert b.events() == [MacLearned(VNI, mac(HA), A_IP)]
    assert c.events() == [MacLearned(VNI, mac(HA), A_IP)]
    assert b.seg.fdb.lookup(mac(HA)) == (Remote(A_IP),)

    # Host B answers, as a host does: unicast to A's MAC. B knows it now: one datagram, to A.
    reply = arp_reply(HB, HB_IP, HA, HA_IP)
    b.send(reply, now + 0.001)
    sent = transfer(b, net, now + 0.001)
    assert [(d.host, d.port) for d in sent] == [(A_IP, VXLAN_PORT)]
    assert sent[0].payload == vxlan_payload(reply, VNI, sent[0].sport)
    assert b.events() == []  # FDB hit: no miss
    assert b.seg.counters.floods == 0

    [got] = a.take_device()
    assert got == raw(reply)
    parsed = Ether(got)
    assert parsed[ARP].op == 2 and parsed[ARP].hwsrc == HB and parsed[ARP].psrc == HB_IP
    assert a.events() == [MacLearned(VNI, mac(HB), B_IP)]
    assert c.take_device() == []

    # Each side's FDB names the right remote, as a learned (non-permanent) entry.
    [entry] = [e for e in a.seg.fdb.entries(now + 1) if e.mac == mac(HB)]
    assert entry.remotes == (Remote(B_IP),) and not entry.permanent
    assert entry.age == pytest.approx(1.0 - 0.001, abs=0.002)
    [entry] = [e for e in b.seg.fdb.entries(now + 1) if e.mac == mac(HA)]
    assert entry.remotes == (Remote(A_IP),) and not entry.permanent

    # From now on unicast goes only to the learned remote: exactly one datagram, to B.
    ping = icmp(HA, HB, HA_IP, HB_IP)
    a.send(ping, now + 2)
    sent = transfer(a, net, now + 2)
    assert [d.host for d in sent] == [B_IP]
    assert sent[0].payload == vxlan_payload(ping, VNI, sent[0].sport)
    [got] = b.take_device()
    assert Ether(got)[ICMP].type == 8 and Ether(got)[IP].dst == HB_IP
    assert c.take_device() == []

    # TCP the other way: one datagram, to A.
    segment = tcp(HB, HA, HB_IP, HA_IP)
    b.send(segment, now + 3)
    sent = transfer(b, net, now + 3)
    assert [d.host for d in sent] == [A_IP]
    [got] = a.take_device()
    assert got == raw(segment)
    assert Ether(got)[TCP].dport == 443
    assert c.take_device() == []

    # C only ever saw the broadcast; nobody missed after learning.
    for v in net:
        assert not any(isinstance(e, L2Miss) for e in v.events())
        assert v.seg.counters.l2_misses == 0
        assert drops(v.seg.counters) == {}


@backends
def test_unknown_unicast_floods_with_l2_miss_then_learned_mac_moves(backend: str) -> None:
    a, b, c = three_vteps(backend)
    net = (a, b, c)
    ping = icmp(HA, HB, HA_IP, HB_IP)
    a.send(ping, 1.0)
    assert a.events() == [L2Miss(VNI, mac(HB), True)]
    assert sorted(d.host for d in transfer(a, net, 1.0)) == [B_IP, C_IP]
    assert a.seg.counters.l2_misses == 1 and a.seg.counters.floods == 1

    # Host A's MAC shows up behind C (a VM migrated): B moves its entry.
    b.take_device()
    b.events()
    c.send(icmp(HA, HB, HA_IP, HB_IP, seq=2), 2.0)
    transfer(c, net, 2.0)
    assert b.events() == [MacMoved(VNI, mac(HA), A_IP, C_IP)]
    assert b.seg.fdb.lookup(mac(HA)) == (Remote(C_IP),)
    assert b.seg.counters.moved == 1 and b.seg.counters.learned == 1


# --- (b) ARP proxy ----------------------------------------------------------------------------


@backends
def test_arp_proxy_answers_locally_and_sends_nothing(backend: str) -> None:
    a = Vtep(A_IP, backend, remotes=(B_IP,), proxy=True, neigh=[(HB_IP, mac(HB))])
    a.send(arp_request(HA, HA_IP, HB_IP))
    assert a.engine.datagrams_to_send() == []
    [frame] = a.take_device()
    reply = Ether(frame)
    assert reply.dst == HA and reply.src == HB and reply.type == 0x0806
    arp = reply[ARP]
    assert arp.op == 2  # is-at
    assert (arp.hwsrc, arp.psrc) == (HB, HB_IP)
    assert (arp.hwdst, arp.pdst) == (HA, HA_IP)
    assert (arp.hwtype, arp.ptype, arp.hwlen, arp.plen) == (1, 0x0800, 6, 4)
    assert len(frame) == 60  # padded to the Ethernet minimum
    assert a.seg.counters.arp_proxied == 1
    assert a.seg.counters.tx_packets == 0 and a.seg.counters.floods == 0
    assert a.events() == []


@backends
def test_arp_proxy_unknown_target_is_an_l3_miss(backend: str) -> None:
    a = Vtep(A_IP, backend, remotes=(B_IP,), proxy=True, neigh=[(HB_IP, mac(HB))])
    a.send(arp_request(HA, HA_IP, "198.19.0.99"))
    assert a.engine.datagrams_to_send() == []
    assert a.take_device() == []
    assert a.events() == [
        L3Miss(VNI, "198.19.0.99"),
        Dropped(DropReason.L3_MISS, VNI, None),
    ]
    assert a.seg.counters.l3_misses == 1
    assert drops(a.seg.counters) == {"l3-miss": 1}
    assert a.seg.counters.tx_packets == 0


@backends
def test_arp_proxy_lets_other_traffic_through(backend: str) -> None:
    a = Vtep(A_IP, backend, remotes=(B_IP,), proxy=True, neigh=[(HB_IP, mac(HB))])
    # an ARP reply is not for the proxy: it is forwarded like any frame
    a.send(arp_reply(HA, HA_IP, HB, HB_IP))
    assert [d.host for d in a.engine.datagrams_to_send()] == [B_IP]
    a.send(icmp(HA, BCAST, HA_IP, "198.19.255.255"))
    assert [d.host for d in a.engine.datagrams_to_send()] == [B_IP]
    assert a.seg.counters.arp_proxied == 0


# --- (c) the batch API and the single-frame API agree, on both backends ----------------------


def _mixed_frames() -> list[Packet]:
    frames: list[Packet] = []
    for k in range(20):
        frames.append(tcp(HA, HB, HA_IP, HB_IP, sport=40000 + k))  # FDB hit
        frames.append(icmp(HA, HC, HA_IP, HC_IP, seq=k))  # FDB hit, other remote
    frames.append(arp_request(HA, HA_IP, HB_IP))  # broadcast: flood
    frames.append(icmp(HA, "02:00:00:00:00:99", HA_IP, "198.19.0.99"))  # miss: flood
    frames.append(
        Ether(dst="01:00:5e:01:02:03", src=HA)
        / IP(src=HA_IP, dst="239.1.2.3")
        / UDP(sport=5000, dport=5001)
    )  # multicast: flood
    frames.append(tcp(HA, HB, HA_IP, HB_IP) / (b"x" * 1400))  # a full-size frame
    return frames


def _engine_with_fdb(backend: str) -> Engine:
    engine = Engine(backend=backend)
    seg = engine.add_segment(SegmentConfig(VNI, remotes=(B_IP, C_IP)))
    seg.fdb.add(mac(HB), Remote(B_IP))
    seg.fdb.add(mac(HC), Remote(C_IP))
    return engine


def _as_bytes(ds: Sequence[Datagram]) -> list[tuple[bytes, str, int, int, int]]:
    return [(bytes(d.payload), d.host, d.port, d.sport, d.vni) for d in ds]


def _batched(backend: str, frames: Sequence[bytes], capacity: int) -> list[Any]:
    engine = _engine_with_fdb(backend)
    batch = FrameBatch(capacity)
    out: list[Any] = []
    for start in range(0, len(frames), capacity):
        batch.clear()
        for f in frames[start : start + capacity]:
            batch.append_frame(f)
        engine.handle_frames(VNI, batch, 0.0)
        out += _as_bytes(engine.datagrams_to_send())  # drain before the batch is reused
    return out


@backends
def test_handle_frames_matches_handle_frame(backend: str) -> None:
    pkts = _mixed_frames()
    frames = [raw(p) for p in pkts]
    single = _engine_with_fdb(backend)
    one_by_one: list[Any] = []
    for f in frames:
        single.handle_frame(VNI, f, 0.0)
        one_by_one += _as_bytes(single.datagrams_to_send())

    assert _batched(backend, frames, 64) == one_by_one
    assert _batched(backend, frames, 7) == one_by_one  # several partial batches

    # scapy agrees on every payload byte; unicast went to one remote, floods to both
    copies = {id(p): 2 if raw(p)[0] & 1 or p.dst == "02:00:00:00:00:99" else 1 for p in pkts}
    assert len(one_by_one) == sum(copies.values())
    it = iter(one_by_one)
    for p in pkts:
        for _ in range(copies[id(p)]):
            payload, host, port, sport, vni = next(it)
            assert payload == vxlan_payload(p, VNI, sport)
            assert port == VXLAN_PORT and vni == VNI
            assert sport == wire.source_port(raw(p))
            if copies[id(p)] == 1:
                assert host == (B_IP if p.dst == HB else C_IP)


def test_backends_produce_identical_datagrams() -> None:
    frames = [raw(p) for p in _mixed_frames()]
    assert _batched("cffi", frames, 64) == _batched("python", frames, 64)


@backends
def test_handle_datagrams_matches_handle_datagram(backend: str) -> None:
    payloads = [vxlan_payload(p, VNI) for p in _mixed_frames()]
    payloads.append(b"\x00" * 30)  # I flag clear: a drop in the middle of the batch
    sources = [(A_IP, B_IP, C_IP)[k % 3] for k in range(len(payloads))]

    single = _engine_with_fdb(backend)
    expected = []
    for p, s in zip(payloads, sources, strict=True):
        single.handle_datagram(p, s, 5.0)
        expected += [(f.vni, bytes(f.frame)) for f in single.frames_to_device()]

    engine = _engine_with_fdb(backend)
    batch = FrameBatch(len(payloads))
    for p in payloads:
        batch.append_payload(p)
    engine.handle_datagrams(batch, sources, 5.0)
    got = [(f.vni, bytes(f.frame)) for f in engine.frames_to_device()]
    assert got == expected
    assert got == [(VNI, p[8:]) for p in payloads[:-1]]
    assert list(engine.events()) == list(single.events())
    assert engine.segment(VNI).counters == single.segment(VNI).counters
    assert engine.counters == single.counters


# --- (d) per-remote port and VNI ---------------------------------------------------------------


@backends
def test_per_remote_port_and_vni_are_honoured(backend: str) -> None:
    a = Vtep(A_IP, backend, engine_kw={"dstport": 8472}, remotes=(B_IP,))
    a.seg.fdb.add(mac(HB), Remote.make(B_IP, port=4790, vni=777))
    a.seg.fdb.add(mac(HC), Remote.make(C_IP, vni=778))  # VNI only: the engine's port
    a.seg.fdb.append(wire.ZERO_MAC, Remote.make(C_IP, port=5000))  # flood-list port

    ping = icmp(HA, HB, HA_IP, HB_IP)
    a.send(ping)
    [d] = a.engine.datagrams_to_send()
    assert (d.host, d.port, d.vni) == (B_IP, 4790, 777)
    assert bytes(d.payload) == vxlan_payload(ping, 777, d.sport)
    assert d.sport == wire.source_port(raw(ping))

    a.send(icmp(HA, HC, HA_IP, HC_IP))
    [d] = a.engine.datagrams_to_send()
    assert (d.host, d.port, d.vni) == (C_IP, 8472, 778)
    assert wire.decode_header(d.payload) == 778

    a.send(arp_request(HA, HA_IP, HB_IP))
    sent = a.engine.datagrams_to_send()
    assert sorted((d.host, d.port, d.vni) for d in sent) == [(B_IP, 8472, VNI), (C_IP, 5000, VNI)]
    assert a.seg.counters.tx_packets == 4  # counted on the segment that sent them


@backends
def test_vni_override_reaches_the_segment_it_names(backend: str) -> None:
    a = Vtep(A_IP, backend)
    a.seg.fdb.add(mac(HB), Remote.make(B_IP, vni=777))
    b = Vtep(B_IP, backend, vni=777)
    ping = icmp(HA, HB, HA_IP, HB_IP)
    a.send(ping)
    transfer(a, (a, b))
    assert b.take_device() == [raw(ping)]
    assert b.events() == [MacLearned(777, mac(HA), A_IP)]


# --- (e) multicast group ----------------------------------------------------------------------


@backends
def test_multicast_group_is_a_flood_destination(backend: str) -> None:
    a = Vtep(A_IP, backend, group="239.1.1.1")
    a.send(arp_request(HA, HA_IP, HB_IP))
    assert [(d.host, d.port) for d in a.engine.datagrams_to_send()] == [("239.1.1.1", 4789)]
    a.send(icmp(HA, HB, HA_IP, HB_IP))  # unknown unicast goes to the group too
    assert [d.host for d in a.engine.datagrams_to_send()] == ["239.1.1.1"]

    both = Vtep(A_IP, backend, remotes=(B_IP,), group="ff05::1:3")
    both.send(arp_request(HA, HA_IP, HB_IP))
    assert sorted(d.host for d in both.engine.datagrams_to_send()) == [B_IP, "ff05::1:3"]


def test_group_must_be_multicast() -> None:
    with pytest.raises(ValueError, match="multicast"):
        SegmentConfig(VNI, group="198.18.0.9")


# --- (f) 802.1Q / 802.1ad ---------------------------------------------------------------------


def _tagged(tag: str) -> Packet:
    vlan = Dot1Q(vlan=10) if tag == "802.1Q" else Dot1AD(vlan=3) / Dot1Q(vlan=10)
    return Ether(dst=HB, src=HA) / vlan / IP(src=HA_IP, dst=HB_IP) / ICMP()


@backends
@pytest.mark.parametrize("tag", ["802.1Q", "802.1ad"])
def test_tagged_frames_dropped_by_default_both_ways(backend: str, tag: str) -> None:
    a, b, _ = three_vteps(backend)
    frame = _tagged(tag)
    a.send(frame)
    assert a.engine.datagrams_to_send() == []
    assert drops(a.seg.counters) == {"vlan-tagged": 1}
    assert a.events() == [Dropped(DropReason.VLAN_TAGGED, VNI, None)]

    b.engine.handle_datagram(vxlan_payload(frame, VNI), A_IP, 0.0)
    b.collect()
    assert b.take_device() == []
    assert drops(b.seg.counters) == {"vlan-tagged": 1}
    assert b.events() == [Dropped(DropReason.VLAN_TAGGED, VNI, A_IP)]
    assert b.seg.fdb.lookup(mac(HA)) is None  # a dropped frame teaches nothing


@backends
@pytest.mark.parametrize("tag", ["802.1Q", "802.1ad"])
def test_tagged_frames_forwarded_with_allow_vlan(backend: str, tag: str) -> None:
    a, b, c = three_vteps(backend, allow_vlan=True)
    frame = _tagged(tag)
    a.send(frame)
    sent = transfer(a, (a, b, c))
    assert sorted(d.host for d in sent) == [B_IP, C_IP]  # unknown unicast: flooded
    [got] = b.take_device()
    assert got == raw(frame)
    assert Ether(got)[Dot1Q].vlan == 10
    assert drops(a.seg.counters) == drops(b.seg.counters) == {}


# --- (g) spoofing and max_addresses -----------------------------------------------------------


@backends
def test_static_mac_from_another_vtep_is_a_spoof(backend: str) -> None:
    b = Vtep(B_IP, backend, remotes=(A_IP, C_IP), fdb=[(mac(HA), Remote.make(A_IP))])
    spoof = icmp(HA, HB, HA_IP, HB_IP)
    b.engine.handle_datagram(vxlan_payload(spoof, VNI), C_IP, 1.0)
    b.collect()
    assert b.take_device() == []
    assert b.events() == [Dropped(DropReason.SPOOFED_STATIC, VNI, C_IP)]
    assert drops(b.seg.counters) == {"spoofed-static": 1}
    assert b.seg.fdb.lookup(mac(HA)) == (Remote(A_IP),)  # the static entry stands

    # the same MAC from the VTEP the static entry names is fine, and not "learned"
    b.engine.handle_datagram(vxlan_payload(spoof, VNI), A_IP, 2.0)
    b.collect()
    assert b.take_device() == [raw(spoof)]
    assert b.events() == []
    assert b.seg.counters.learned == 0 and b.seg.counters.rx_packets == 1


@backends
def test_max_addresses_refuses_learning_but_delivers(backend: str) -> None:
    b = Vtep(B_IP, backend, remotes=(A_IP,), max_addresses=2)
    hosts = [f"02:00:00:00:01:{k:02x}" for k in range(3)]
    for k, h in enumerate(hosts):
        frame = icmp(h, HB, f"198.19.1.{k}", HB_IP)
        b.engine.handle_datagram(vxlan_payload(frame, VNI), A_IP, 1.0)
    b.collect()
    assert len(b.take_device()) == 3  # all delivered
    events = b.events()
    assert [type(e) for e in events] == [MacLearned, MacLearned, LearnRefused]
    assert events[2] == LearnRefused(VNI, A_IP, "full", 1)
    c = b.seg.counters
    assert (c.learned, c.learn_refused, c.rx_packets) == (2, 1, 3)
    assert b.seg.fdb.lookup(mac(hosts[2])) is None
    assert b.seg.fdb.learned_count == 2
    assert drops(c) == {}


# --- (h) ageing -------------------------------------------------------------------------------


@backends
def test_ageing_via_timer_emits_mac_aged(backend: str) -> None:
    b = Vtep(B_IP, backend, remotes=(A_IP,), ageing=10.0)
    assert b.engine.get_timer() is None
    frame = icmp(HA, HB, HA_IP, HB_IP)
    b.engine.handle_datagram(vxlan_payload(frame, VNI), A_IP, 100.0)
    assert b.events() == [MacLearned(VNI, mac(HA), A_IP)]
    assert b.engine.get_timer() == pytest.approx(110.0)

    b.engine.handle_timer(109.5)
    assert b.events() == []
    assert b.seg.fdb.lookup(mac(HA)) == (Remote(A_IP),)

    # refreshed at 105: survives the 110 deadline and is filed again for 115
    b.engine.handle_datagram(vxlan_payload(frame, VNI), A_IP, 105.0)
    b.engine.handle_timer(110.0)
    assert b.events() == []
    timer = b.engine.get_timer()
    assert timer is not None and 110.0 < timer <= 115.0
    while (timer := b.engine.get_timer()) is not None and not b.seg.counters.aged:
        b.engine.handle_timer(timer)
    assert timer is None
    assert b.events() == [MacAged(VNI, mac(HA), A_IP)]
    assert b.seg.fdb.lookup(mac(HA)) is None
    assert b.seg.counters.aged == 1

    # with the entry gone, unicast to A's host is a miss again
    b.send(icmp(HB, HA, HB_IP, HA_IP), 116.0)
    assert b.events() == [L2Miss(VNI, mac(HA), True)]


@backends
def test_ageing_zero_never_ages(backend: str) -> None:
    b = Vtep(B_IP, backend, ageing=0)
    b.engine.handle_datagram(vxlan_payload(icmp(HA, HB, HA_IP, HB_IP), VNI), A_IP, 1.0)
    assert b.engine.get_timer() is None
    b.engine.handle_timer(1e9)
    assert b.seg.fdb.lookup(mac(HA)) == (Remote(A_IP),)


# --- (i) counters -----------------------------------------------------------------------------


@backends
def test_counters_add_up(backend: str) -> None:
    a, b, c = three_vteps(backend)
    net = (a, b, c)
    a.seg.fdb.add(mac(HB), Remote(B_IP))
    unicast = [tcp(HA, HB, HA_IP, HB_IP, sport=41000 + k) for k in range(5)]
    broadcast = [arp_request(HA, HA_IP, f"198.19.0.{k}") for k in range(10, 13)]
    unknown = [icmp(HA, "02:00:00:00:00:77", HA_IP, "198.19.0.77", seq=k) for k in range(2)]
    for f in unicast + broadcast + unknown:
        a.send(f)
    sent = transfer(a, net)

    ca = a.seg.counters
    assert len(sent) == 5 + 2 * 3 + 2 * 2
    assert ca.tx_packets == len(sent)
    inner = [len(raw(f)) for f in unicast] + [2 * len(raw(f)) for f in broadcast + unknown]
    assert ca.tx_bytes == sum(inner) == sum(len(d.payload) - 8 for d in sent)
    assert ca.floods == 3 + 2
    assert ca.l2_misses == 2
    assert (ca.rx_packets, ca.rx_bytes, ca.dropped) == (0, 0, 0)

    cb, cc = b.seg.counters, c.seg.counters
    assert cb.rx_packets + cc.rx_packets == len(sent)
    assert cb.rx_bytes + cc.rx_bytes == ca.tx_bytes
    assert cb.rx_packets == len(b.take_device()) == 5 + 3 + 2
    assert cc.rx_packets == len(c.take_device()) == 3 + 2
    assert cb.learned == cc.learned == 1

    d = ca.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["tx_packets"] == 15 and d["floods"] == 5 and d["dropped"] == 0 and d["drops"] == {}

    # drops appear by reason, and the total follows
    a.send(_tagged("802.1Q"))
    a.send(b"\x01" * 10)
    d = a.seg.counters.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["drops"] == {"inner-too-short": 1, "vlan-tagged": 1}
    assert d["dropped"] == 2
    assert set(Counters().to_dict()) >= {"rx_packets", "tx_bytes", "l2_misses", "drops"}


@backends
def test_no_flood_list_means_no_destination(backend: str) -> None:
    a = Vtep(A_IP, backend)
    a.send(arp_request(HA, HA_IP, HB_IP))
    a.send(icmp(HA, HB, HA_IP, HB_IP))
    assert a.engine.datagrams_to_send() == []
    assert a.events() == [
        Dropped(DropReason.NO_DESTINATION, VNI, None),
        L2Miss(VNI, mac(HB), False),
        Dropped(DropReason.NO_DESTINATION, VNI, None),
    ]
    assert a.seg.counters.floods == 0 and a.seg.counters.l2_misses == 1
    assert drops(a.seg.counters) == {"no-destination": 2}


# --- (j) unknown VNI, loops, the event queue --------------------------------------------------


@backends
def test_unknown_vni_is_dropped_engine_wide(backend: str) -> None:
    b = Vtep(B_IP, backend)
    b.engine.handle_datagram(vxlan_payload(icmp(HA, HB, HA_IP, HB_IP), VNI + 1), A_IP, 0.0)
    b.collect()
    assert b.take_device() == []
    assert b.events() == [Dropped(DropReason.UNKNOWN_VNI, None, A_IP)]
    assert drops(b.engine.counters) == {"unknown-vni": 1}
    assert drops(b.seg.counters) == {}
    with pytest.raises(KeyError):
        b.engine.handle_frame(VNI + 1, raw(icmp(HA, HB, HA_IP, HB_IP)), 0.0)


@backends
def test_looped_frame_is_dropped(backend: str) -> None:
    a = Vtep(A_IP, backend, remotes=(B_IP,), local_mac=mac(HA))
    own = icmp(HA, BCAST, HA_IP, "198.19.255.255")
    a.engine.handle_datagram(vxlan_payload(own, VNI), B_IP, 0.0)
    a.collect()
    assert a.take_device() == []
    assert a.events() == [Dropped(DropReason.LOOPED, VNI, B_IP)]
    assert drops(a.seg.counters) == {"looped": 1}
    assert a.seg.fdb.lookup(mac(HA)) is None


@backends
def test_event_queue_is_bounded(backend: str) -> None:
    b = Vtep(B_IP, backend, engine_kw={"max_events": 3})
    for k in range(10):
        b.engine.handle_datagram(b"\x00" * k, A_IP, 0.0)  # all too short
    assert len(b.events()) == 3
    assert b.engine.events_lost == 7
    assert drops(b.engine.counters) == {"too-short": 8, "no-i-flag": 2}  # counted regardless
    b.engine.handle_datagram(b"", A_IP, 0.0)
    assert b.engine.next_event() == Dropped(DropReason.TOO_SHORT, None, A_IP)
    assert b.engine.next_event() is None


def test_events_are_json_friendly() -> None:
    evs: list[Event] = [
        MacLearned(VNI, mac(HA), A_IP),
        L2Miss(VNI, mac(HB), True),
        Dropped(DropReason.LOOPED, None, B_IP),
    ]
    assert [json.loads(json.dumps(e.to_dict())) for e in evs] == [
        {"event": "learned", "vni": VNI, "mac": HA, "remote": A_IP},
        {"event": "l2miss", "vni": VNI, "mac": HB, "flooded": True},
        {"event": "dropped", "reason": "looped", "vni": None, "source": B_IP},
    ]
