"""The IPv6 ND proxy: neighbour solicitations from the device answered from the neighbour table
(RFC 4861 advertisements, as the kernel's vxlan ``proxy`` builds them), unknown targets dropped
with an L3 miss and never flooded, duplicate address detection not answered.

scapy is the oracle: the advertisement must be byte for byte scapy's ``ICMPv6ND_NA`` with an
``ICMPv6NDOptDstLLAddr`` (scapy computes the checksum), and scapy must find its checksum right.
Every engine test runs on both kernel backends, and, where the C datapath is built, once more
through it (``forward_frames``): the same frames must come out.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from vxlanpy import datapath as datapath_mod
from vxlanpy import nd, stats
from vxlanpy.batch import FrameBatch
from vxlanpy.config import load_config
from vxlanpy.datapath import Datapath
from vxlanpy.engine import Engine, SegmentConfig
from vxlanpy.events import Dropped, L3Miss
from vxlanpy.export import export_commands
from vxlanpy.render import stats_text
from vxlanpy.wire import DropReason, parse_mac

VNI = 77
REMOTES = ("198.18.0.2", "198.18.0.3")
HA, HB, HC = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
A6, B6, C6 = "2001:db8::a", "2001:db8::b", "2001:db8::c"
UNKNOWN6 = "2001:db8::99"
MODES = ["cffi", "python", "datapath"]


def solicited_node(ip: str) -> tuple[str, str]:
    """The solicited-node multicast address of ``ip`` and its Ethernet group address."""
    low = ipaddress.IPv6Address(ip).packed[-3:]
    group = ipaddress.IPv6Address(b"\xff\x02" + bytes(9) + b"\x01\xff" + low)
    return str(group), "33:33:ff:" + ":".join(f"{b:02x}" for b in low)


def ns(target: str, src: str = A6, lladdr: str | None = HA, tc: int = 0, **ip: object) -> Packet:
    """A neighbour solicitation from host A, to the target's solicited-node group."""
    group, gmac = solicited_node(target)
    p = Ether(src=HA, dst=gmac) / IPv6(src=src, dst=group, hlim=255, tc=tc, **ip)
    p = p / ICMPv6ND_NS(tgt=target)
    return p / ICMPv6NDOptSrcLLAddr(lladdr=lladdr) if lladdr else p


class Vtep:
    """An engine with one proxying segment; ``mode`` a kernel backend or the C datapath."""

    def __init__(self, mode: str, proxy: bool = True) -> None:
        if mode == "datapath" and not datapath_mod.available():
            pytest.skip("the C datapath needs the cffi backend")
        self.engine = Engine(backend="python" if mode == "python" else "cffi")
        self.seg = self.engine.add_segment(SegmentConfig(vni=VNI, remotes=REMOTES, proxy=proxy))
        self.seg.neigh.add(B6, parse_mac(HB))
        self.seg.neigh.add("198.19.0.2", parse_mac(HC))  # an IPv4 entry: not for ND
        self.fast = mode == "datapath"
        if self.fast:
            self.engine.attach_datapath(Datapath())

    def send(self, *frames: Packet | bytes) -> tuple[list[str], list[bytes]]:
        """Frames from the device; the hosts datagrams went to, and the frames sent back."""
        b = FrameBatch(8, 512)
        for f in frames:
            b.append_frame(raw(f) if isinstance(f, Packet) else f, VNI)
        if self.fast:
            self.engine.forward_frames(VNI, b, 0.0)
        else:
            self.engine.handle_frames(VNI, b, 0.0)
        hosts = sorted(d.host for d in self.engine.datagrams_to_send())
        return hosts, [bytes(f.frame) for f in self.engine.frames_to_device()]

    def drops(self) -> dict[str, int]:
        return {r.value: n for r, n in self.seg.counters.drops.items()}


def expected_na(dst_mac: str, dst_ip: str, tc: int = 0) -> bytes:
    """scapy's advertisement of B6 at HB, as the kernel's vxlan answers (S and O set, R clear)."""
    p = Ether(src=HB, dst=dst_mac) / IPv6(src=B6, dst=dst_ip, hlim=255, tc=tc)
    return raw(p / ICMPv6ND_NA(tgt=B6, R=0, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=HB))


@pytest.mark.parametrize("mode", MODES)
def test_solicitation_is_answered_as_scapy_builds_the_advertisement(mode: str) -> None:
    v = Vtep(mode)
    hosts, frames = v.send(ns(B6, tc=0xB9))
    assert hosts == []  # nothing on the wire
    assert frames == [expected_na(HA, A6, tc=0xB0)]  # the upper 4 bits of the class, as Linux
    na = Ether(frames[0])
    sent = na[ICMPv6ND_NA].cksum
    del na[ICMPv6ND_NA].cksum
    assert Ether(raw(na))[ICMPv6ND_NA].cksum == sent  # scapy finds the checksum right
    assert na[IPv6].hlim == 255 and na[ICMPv6NDOptDstLLAddr].lladdr == HB
    assert v.seg.counters.nd_proxied == 1 and v.seg.counters.arp_proxied == 0
    assert v.seg.counters.tx_packets == 0 and v.seg.counters.floods == 0
    assert list(v.engine.events()) == []


@pytest.mark.parametrize("mode", MODES)
def test_answer_goes_to_the_source_link_layer_option_else_the_ethernet_source(mode: str) -> None:
    v = Vtep(mode)
    # a unicast probe (neighbour unreachability detection) without the option
    probe = Ether(src=HA, dst=HB) / IPv6(src=A6, dst=B6, hlim=255) / ICMPv6ND_NS(tgt=B6)
    # the option names another MAC than the frame's source: the kernel answers the option
    other = ns(B6, src="fe80::a", lladdr=HC)
    _, frames = v.send(probe, other)
    assert frames == [expected_na(HA, A6), expected_na(HC, "fe80::a")]
    assert v.seg.counters.nd_proxied == 2


@pytest.mark.parametrize("mode", MODES)
def test_unknown_target_is_an_l3_miss_and_not_flooded(mode: str) -> None:
    v = Vtep(mode)
    hosts, frames = v.send(ns(UNKNOWN6))
    assert hosts == [] and frames == []
    assert list(v.engine.events()) == [
        L3Miss(VNI, UNKNOWN6),
        Dropped(DropReason.L3_MISS, VNI, None),
    ]
    assert v.seg.counters.l3_misses == 1 and v.drops() == {"l3-miss": 1}
    # a multicast target or a loopback destination is no neighbour either
    mcast = ns("ff02::1")
    loop = Ether(src=HA, dst=HB) / IPv6(src=A6, dst="::1") / ICMPv6ND_NS(tgt=B6)
    assert v.send(mcast, loop) == ([], [])
    assert v.drops() == {"l3-miss": 3}


@pytest.mark.parametrize("mode", MODES)
def test_duplicate_address_detection_is_not_answered(mode: str) -> None:
    """Source ``::``: the kernel's answer would go to ``::`` (no host takes it). vxlanpy
    answers nothing and floods nothing, whether the table has the target or not."""
    v = Vtep(mode)
    assert v.send(ns(B6, src="::", lladdr=None), ns(A6, src="::", lladdr=None)) == ([], [])
    assert v.drops() == {"nd-dad": 2}
    assert v.seg.counters.nd_proxied == 0 and v.seg.counters.l3_misses == 0
    assert [type(e) for e in v.engine.events()] == [Dropped, Dropped]


@pytest.mark.parametrize("mode", MODES)
def test_malformed_solicitations_are_dropped(mode: str) -> None:
    v = Vtep(mode)
    zero_option = raw(ns(B6, lladdr=None) / Raw(b"\x01\x00" + b"\x00" * 6))
    past_end = raw(ns(B6, lladdr=None) / Raw(b"\x01\x02" + b"\x00" * 6))  # 16 bytes, 8 there
    long_plen = bytearray(raw(ns(B6)))
    long_plen[18:20] = (200).to_bytes(2, "big")  # more payload than the frame holds
    assert v.send(zero_option, past_end, bytes(long_plen)) == ([], [])
    assert v.drops() == {"bad-nd": 3}
    with pytest.raises(nd.BadSolicitation):
        nd.parse_solicitation(zero_option)


@pytest.mark.parametrize("mode", MODES)
def test_what_is_not_a_plain_solicitation_is_forwarded(mode: str) -> None:
    """As the kernel: an extension header before ICMPv6, another ICMPv6 code, an
    advertisement, an echo request: none is the proxy's; group destinations are flooded."""
    v = Vtep(mode)
    group, gmac = solicited_node(B6)
    hbh = Ether(src=HA, dst=gmac) / IPv6(src=A6, dst=group, hlim=255) / IPv6ExtHdrHopByHop()
    hbh = hbh / ICMPv6ND_NS(tgt=B6) / ICMPv6NDOptSrcLLAddr(lladdr=HA)
    code1 = ns(B6)
    code1[ICMPv6ND_NS].code = 1
    na = Ether(src=HA, dst="33:33:00:00:00:01") / IPv6(src=A6, dst="ff02::1", hlim=255)
    na = na / ICMPv6ND_NA(tgt=A6) / ICMPv6NDOptDstLLAddr(lladdr=HA)
    echo = Ether(src=HA, dst=gmac) / IPv6(src=A6, dst=group) / ICMPv6EchoRequest()
    hosts, frames = v.send(hbh, code1, na, echo)
    assert hosts == sorted(REMOTES * 4) and frames == []
    assert v.seg.counters.floods == 4 and v.seg.counters.nd_proxied == 0
    assert v.drops() == {}


@pytest.mark.parametrize("mode", MODES)
def test_without_proxy_solicitations_are_flooded(mode: str) -> None:
    v = Vtep(mode, proxy=False)
    hosts, frames = v.send(ns(B6), ns(UNKNOWN6), ns(B6, src="::", lladdr=None))
    assert hosts == sorted(REMOTES * 3) and frames == []
    assert v.seg.counters.nd_proxied == 0 and v.drops() == {}
    assert list(v.engine.events()) == []


def test_solicitations_go_up_from_c_only_while_the_proxy_is_on() -> None:
    if not datapath_mod.available():
        pytest.skip("the C datapath needs the cffi backend")
    v = Vtep("datapath")
    dp = v.engine.datapath
    assert dp is not None
    b = FrameBatch(4, 512)
    b.append_frame(raw(ns(B6)), VNI)
    assert dp.tx_classify(VNI, b) == 0  # an upcall: the engine answers it
    v.seg.proxy = False
    v.engine.sync_datapath()
    assert dp.tx_classify(VNI, b) == 1  # a group destination: flooded in C


def test_advertisement_flags_and_router() -> None:
    """The Router flag when asked for (vxlanpy's table has no router entries: always clear)."""
    sol = nd.parse_solicitation(raw(ns(B6)))
    assert sol is not None and not sol.dad and sol.lladdr == parse_mac(HA)
    na = Ether(nd.advertisement(sol, parse_mac(HB), router=True))
    assert (na[ICMPv6ND_NA].R, na[ICMPv6ND_NA].S, na[ICMPv6ND_NA].O) == (1, 1, 1)
    assert nd.parse_solicitation(raw(ns(B6))[:70]) is None  # too short to be one


def test_ipv6_entries_from_a_config_file_answer_and_export(tmp_path: Path) -> None:
    """``neigh = [{ ip = "2001:db8::b", ... }]`` in a config file: the engine built from it
    answers a solicitation for it (the address in any spelling); ``export`` writes the entry
    for the kernel."""
    cfg_file = tmp_path / "nd.toml"
    cfg_file.write_text(
        '[[segment]]\nvni = 77\nproxy = true\nremotes = ["198.18.0.2"]\n'
        f'neigh = [{{ ip = "2001:DB8:0::b", lladdr = "{HB}" }}]\n'
    )
    cfg, _ = load_config(str(cfg_file))
    e = Engine(backend="python")
    e.add_segment(cfg.segments[0].segment_config())
    e.handle_frame(VNI, raw(ns(B6)), 0.0)
    assert [bytes(f.frame) for f in e.frames_to_device()] == [expected_na(HA, A6)]
    out = export_commands(dataclasses.asdict(cfg))
    # as written in the file (iproute2 reads any spelling)
    assert f"ip neigh add 2001:DB8:0::b lladdr {HB} dev vxlan77 nud permanent" in out


@settings(max_examples=300, deadline=None)
@given(tail=st.binary(max_size=80), plen=st.integers(0, 120), code=st.sampled_from([0, 0, 1]))
def test_any_solicitation_bytes_are_answered_dropped_or_forwarded(
    tail: bytes, plen: int, code: int
) -> None:
    """Whatever follows an ICMPv6 type 135 header, the proxy answers, drops with a reason or
    forwards it; it never raises."""
    head = bytearray(raw(ns(B6, lladdr=None)))
    head[18:20] = plen.to_bytes(2, "big")
    head[55] = code
    frame = bytes(head) + tail
    try:
        sol = nd.parse_solicitation(frame)
    except nd.BadSolicitation:
        sol = None
    if sol is not None:
        assert len(nd.advertisement(sol, parse_mac(HB))) == 86
    e = Engine(backend="python")
    seg = e.add_segment(SegmentConfig(vni=VNI, remotes=REMOTES[:1], proxy=True))
    seg.neigh.add(B6, parse_mac(HB))
    e.handle_frame(VNI, frame, 0.0)
    answered, sent = len(e.frames_to_device()), len(e.datagrams_to_send())
    dropped = seg.counters.dropped
    assert answered + sent + dropped == 1, (answered, sent, dict(seg.counters.drops))
    assert answered == seg.counters.nd_proxied


def test_text_form_shows_nd_proxied_when_not_zero() -> None:
    v = Vtep("python")
    v.send(ns(B6))
    st = {"segments": {str(VNI): stats.segment_stats(v.engine, VNI)}, "unattributed": {"drops": {}}}
    assert "arp-proxied 0  nd-proxied 1  learned 0" in stats_text(st)
    st["segments"][str(VNI)]["nd_proxied"] = 0
    assert "nd-proxied" not in stats_text(st)
