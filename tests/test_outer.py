"""The outer header's TOS / TTL / DF (``kernels.outer_fields``) and RFC 6040 ECN decapsulation
(``kernels.ecn_decap``): the C kernels and their Python twins agree on every input, and both
follow RFC 6040 and the kernel's ``tos``/``ttl``/``df`` settings as written out here from the
RFC's tables, independently of the code under test. Inner packets are built with scapy."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw

from vxlanpy import kernels
from vxlanpy.abi import Status
from vxlanpy.batch import FrameBatch
from vxlanpy.headers import Outer

BACKENDS = ["python"] + (["cffi"] if kernels.native("cffi") is not None else [])

NOT_ECT, ECT1, ECT0, CE = 0, 1, 2, 3


def _rfc6040_decap(inner: int, outer: int) -> int | None:
    """RFC 6040 section 4.2, Figure 4: the inner ECN field after decapsulation (None: drop)."""
    if inner == NOT_ECT:
        return None if outer == CE else NOT_ECT
    if outer == CE:
        return CE
    if outer == ECT1 and inner == ECT0:
        return ECT1
    return inner


def _ip4(tos: int, ttl: int = 64, df: bool = False) -> Packet:
    ip = IP(src="192.0.2.1", dst="192.0.2.2", tos=tos, ttl=ttl, flags="DF" if df else 0)
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / UDP() / Raw(b"x" * 20)


def _ip6(tc: int, hlim: int = 64) -> Packet:
    ip6 = IPv6(src="2001:db8::1", dst="2001:db8::2", tc=tc, hlim=hlim)
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip6 / UDP() / Raw(b"x" * 20)


def _batch(frames: list[bytes]) -> FrameBatch:
    b = FrameBatch(len(frames), 2048)
    for f in frames:
        b.append_frame(f)
    return b


def _fields(backend: str, frames: list[bytes], outer: Outer) -> list[tuple[int, int, int]]:
    b = _batch(frames)
    kernels.load(backend).outer_fields(b, outer)
    return [(b.tos[i], b.ttl[i], b.df[i]) for i in range(b.count)]


FRAMES = {
    "ip4": lambda tos: _ip4(tos, ttl=17, df=bool(tos & 4)),
    "ip6": lambda tos: _ip6(tos, hlim=33),
    "vlan-ip4": lambda tos: Ether(dst="02:00:00:00:00:02") / Dot1Q(vlan=5) / IP(tos=tos, ttl=3),
    "arp": lambda tos: Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="192.0.2.9"),
}
OUTERS = [
    Outer(),
    Outer(tos=0x28, ttl=9, df=True),
    Outer(tos_inherit=True, ttl_inherit=True, df_inherit=True),
    Outer(tos=0xB9, ttl_inherit=True),  # a fixed TOS's own ECN bits are replaced
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("outer", OUTERS, ids=["default", "fixed", "inherit", "fixed-ecn-bits"])
@pytest.mark.parametrize("kind", sorted(FRAMES))
def test_outer_fields_follow_the_settings(backend: str, outer: Outer, kind: str) -> None:
    tos_values = [0x00, 0x01, 0x02, 0x03, 0x04, 0xB8, 0xBB, 0xFE]
    frames = [bytes(FRAMES[kind](t)) for t in tos_values]
    got = _fields(backend, frames, outer)
    for t, (tos, ttl, df) in zip(tos_values, got, strict=True):
        ip = kind != "arp"
        inner_tos = t if ip else 0
        ecn = inner_tos & 3
        # INET_ECN_encapsulate: the inner ECN field, CE sent as ECT(0)
        want_ecn = ECT0 if ecn == CE else ecn
        base = inner_tos if outer.tos_inherit else outer.tos
        assert tos == (base & 0xFC) | want_ecn, (kind, t)
        inner_ttl = {"ip4": 17, "ip6": 33, "vlan-ip4": 3}.get(kind, 0)
        assert ttl == (inner_ttl if outer.ttl_inherit and inner_ttl else outer.ttl), (kind, t)
        inner_df = {"ip4": bool(t & 4), "ip6": True, "vlan-ip4": False}.get(kind, False)
        assert df == int(inner_df if outer.df_inherit else outer.df), (kind, t)


def _decap_case(inner_ecn: int, outer_ecn: int, v6: bool) -> tuple[bytes, int]:
    f = _ip6(0xB8 | inner_ecn) if v6 else _ip4(0xB8 | inner_ecn)
    return bytes(f), 0x20 | outer_ecn  # the outer DSCP is never carried inward


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("v6", [False, True], ids=["ip4", "ip6"])
def test_ecn_decap_is_rfc6040(backend: str, v6: bool) -> None:
    cases = list(itertools.product(range(4), range(4)))
    b = _batch([_decap_case(i, o, v6)[0] for i, o in cases])
    for k, (i, o) in enumerate(cases):
        b.tos[k] = _decap_case(i, o, v6)[1]
        b.status[k] = Status.OK
    rewritten = kernels.load(backend).ecn_decap(b)
    changed = 0
    for k, (inner, outer) in enumerate(cases):
        want = _rfc6040_decap(inner, outer)
        pkt = Ether(bytes(b.frame(k)))
        if want is None:
            assert b.status[k] == Status.ECN, (inner, outer)
            continue
        assert b.status[k] == Status.OK
        if v6:
            assert pkt[IPv6].tc == 0xB8 | want, (inner, outer)
        else:
            assert pkt[IP].tos == 0xB8 | want, (inner, outer)
            ip = pkt[IP]
            sent = ip.chksum
            del ip.chksum
            assert IP(bytes(ip)).chksum == sent, "the incremental IPv4 checksum is wrong"
        changed += want != inner
    assert rewritten == changed


@pytest.mark.parametrize("backend", BACKENDS)
def test_ecn_decap_leaves_other_frames(backend: str) -> None:
    arp = bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="192.0.2.9"))
    bad = bytes(_ip4(0))
    b = _batch([arp, bad, bad])
    b.tos[0] = b.tos[1] = b.tos[2] = CE
    b.status[1] = Status.NO_I_FLAG  # not decapsulated: untouched
    b.status[2] = Status.OK
    kernels.load(backend).ecn_decap(b)
    assert bytes(b.frame(0)) == arp and b.status[0] == Status.OK  # not IP: nothing to mark
    assert b.status[1] == Status.NO_I_FLAG
    assert b.status[2] == Status.ECN


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs the C backend to compare with")
@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.binary(min_size=0, max_size=120), min_size=1, max_size=8),
    tos=st.lists(st.integers(0, 255), min_size=8, max_size=8),
    outer=st.sampled_from(OUTERS),
)
def test_twins_agree_on_any_bytes(data: list[bytes], tos: list[int], outer: Outer) -> None:
    # arbitrary frames, some made to look like IP: the C kernels and the twins agree exactly
    frames = []
    for k, d in enumerate(data):
        head = bytes(_ip4(tos[k]))[:34] if k % 3 == 0 else bytes(_ip6(tos[k]))[:54]
        frames.append(head[: len(d) % (len(head) + 1)] + d if k % 2 else d)
    assert _fields("python", frames, outer) == _fields("cffi", frames, outer)
    results = []
    for backend in ("python", "cffi"):
        b = _batch(frames)
        for k in range(b.count):
            b.tos[k] = tos[k]
        n = kernels.load(backend).ecn_decap(b)
        results.append((n, [bytes(b.frame(k)) for k in range(b.count)], list(b.status)))
    assert results[0] == results[1]
