"""The peer watch without root: its BPF program run by a small classic-BPF interpreter (the
instructions it uses) on packets built with scapy, and its once-per-peer decisions."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from vxlanpy.peerwatch import FILTERED, SNAP, PeerWatch


def run_bpf(prog: list[tuple[int, int, int, int]], pkt: bytes, ifindex: int = 2) -> int:
    """What the kernel's classic BPF returns for ``pkt`` received on ``ifindex`` (0: not
    kept); a load past the end returns 0, as the kernel does."""
    a = x = pc = 0
    for _ in range(10_000):
        code, jt, jf, k = prog[pc]
        pc += 1
        cls, size, mode = code & 0x07, code & 0x18, code & 0xE0
        if cls in (0x00, 0x01):  # LD, LDX
            if code == 0x01:  # ldx #k
                x = k
                continue
            if code == 0xB1:  # ldxb 4*([k]&0xf)
                if k >= len(pkt):
                    return 0
                x = (pkt[k] & 0xF) * 4
                continue
            if code == 0x20 and k == 0xFFFFF008:  # ld ifindex (SKF_AD_IFINDEX)
                a = ifindex
                continue
            off = k + (x if mode == 0x40 else 0)
            n = {0x00: 4, 0x08: 2, 0x10: 1}[size]
            if off + n > len(pkt):
                return 0
            a = int.from_bytes(pkt[off : off + n], "big")
        elif cls == 0x05:  # JMP
            op = code & 0xF0
            if op == 0x00:
                pc += k
            elif op == 0x10:
                pc += jt if a == k else jf
            elif op == 0x40:
                pc += jt if a & k else jf
            else:
                raise AssertionError(f"opcode {code:#x}")
        elif cls == 0x06:
            return k
        else:
            raise AssertionError(f"opcode {code:#x}")
    raise AssertionError("no return")


def v4(src: str = "198.18.0.2", csum: int | None = None, flags: int = 0x08, **kw: object) -> bytes:
    udp = UDP(sport=50000, dport=4789)
    if csum is not None:
        udp.chksum = csum
    p = (
        IP(src=src, dst="198.18.0.1", **kw)
        / udp
        / VXLAN(flags=flags, vni=7)
        / Ether()
        / (b"x" * 64)
    )
    return bytes(p)


def v6(src: str = "2001:2::2", csum: int | None = None, frag: bool = False) -> bytes:
    udp = UDP(sport=50000, dport=4789)
    if csum is not None:
        udp.chksum = csum
    ip = IPv6(src=src, dst="2001:2::1")
    if frag:
        ip = ip / IPv6ExtHdrFragment(m=1, offset=0)
    return bytes(ip / udp / VXLAN(flags=0x08, vni=7) / Ether() / (b"x" * 64))


@pytest.mark.parametrize(
    ("pkt", "zero_tx", "kept", "kinds"),
    [
        (v4(), False, False, ()),  # a checksum, as ours: matching
        (v4(csum=0), False, True, ("zero-checksum",)),
        (v4(csum=0), True, False, ()),
        (v4(), True, True, ("checksum",)),
        (v4(flags=0x0C), False, True, ("reserved-bits",)),
        (v4(flags=0x88), False, True, ("reserved-bits",)),  # G without GBP on: reserved
        (v4(flags=0x08, frag=0, proto=17)[:-1] + b"\0", False, False, ()),
        (v6(), False, False, ()),
        (v6(csum=0), False, True, ("zero-checksum",)),
        (v6(frag=True), False, True, ("fragments",)),
    ],
)
def test_the_program_keeps_what_differs(
    pkt: bytes, zero_tx: bool, kept: bool, kinds: tuple[str, ...]
) -> None:
    is6 = pkt[0] >> 4 == 6
    w = PeerWatch(is6, 4789, zero_tx)
    assert run_bpf(w.program(), pkt) == (SNAP if kept else 0)
    ev = w.packet(pkt[:SNAP])
    assert (ev.kinds if ev else ()) == kinds


def test_own_checksums_not_watched_when_peers_take_zeros() -> None:
    for is6, mk in ((False, v4), (True, v6)):
        w = PeerWatch(is6, 4789, zero_tx=True, zeros_taken=True)
        assert run_bpf(w.program(), mk()) == 0 and w.packet(mk()) is None
        assert run_bpf(w.program(), mk(csum=0)) == 0


def test_ipv4_fragments_first_kept_later_ones_not() -> None:
    first = bytearray(v4())
    struct.pack_into("!H", first, 6, 0x2000)  # MF, offset 0
    later = bytearray(first)
    struct.pack_into("!H", later, 6, 0x0010)  # offset 128 bytes: no UDP header in it
    w = PeerWatch(False, 4789, False)
    assert run_bpf(w.program(), bytes(first)) == SNAP
    assert run_bpf(w.program(), bytes(later)) == 0
    ev = w.packet(bytes(first))
    assert ev is not None and ev.kinds == ("fragments",)


def test_other_ports_and_protocols_are_not_kept() -> None:
    w = PeerWatch(False, 4789, False)
    other = bytearray(v4(csum=0))
    struct.pack_into("!H", other, 22, 53)  # destination port 53
    assert run_bpf(w.program(), bytes(other)) == 0
    tcp = bytearray(v4(csum=0))
    tcp[9] = 6
    assert run_bpf(w.program(), bytes(tcp)) == 0


def test_gbp_bits_are_not_reserved_with_gbp() -> None:
    pkt = v4(flags=0x88)
    assert run_bpf(PeerWatch(False, 4789, False, gbp=True).program(), pkt) == 0
    assert run_bpf(PeerWatch(False, 4789, False, gbp=False).program(), pkt) == SNAP


@pytest.mark.parametrize("is6", [False, True])
def test_once_per_peer_then_left_out_by_the_program(is6: bool) -> None:
    w = PeerWatch(is6, 4789, False)
    a, b = ("2001:2::2", "2001:2::3") if is6 else ("198.18.0.2", "198.18.0.3")
    mk = v6 if is6 else v4
    events = [w.packet(mk(src=a, csum=0)) for _ in range(5)]
    assert [e.remote for e in events if e] == [a]
    assert run_bpf(w.program(), mk(src=a, csum=0)) == 0  # warned: left out
    assert run_bpf(w.program(), mk(src=b, csum=0)) == SNAP  # another one still kept
    ev = w.packet(mk(src=b, csum=0))
    assert ev is not None and ev.remote == b and "hint" in ev.to_dict()
    assert ev.to_dict()["event"] == "mismatch"


def test_the_taps_are_not_watched() -> None:
    w = PeerWatch(False, 4789, False, devices=[7, 9])
    pkt = v4(csum=0)
    assert run_bpf(w.program(), pkt, ifindex=7) == 0  # VXLAN inside the overlay
    assert run_bpf(w.program(), pkt, ifindex=9) == 0
    assert run_bpf(w.program(), pkt, ifindex=2) == SNAP  # the underlay


def test_bounded_peers() -> None:
    w = PeerWatch(False, 4789, False, max_peers=FILTERED + 10)
    for i in range(FILTERED + 20):
        w.packet(v4(src=f"198.18.{i // 250}.{i % 250 + 1}", csum=0))
    assert len(w.warned) == FILTERED + 10
    assert len(w.program()) < 4096  # the kernel's limit, with FILTERED peers left out
    assert run_bpf(w.program(), v4(src="198.18.0.1", csum=0)) == 0


def test_truncated_and_garbage_packets() -> None:
    w = PeerWatch(False, 4789, False)
    for junk in (b"", b"\x45", v4(csum=0)[:30], bytes(200)):
        assert w.packet(junk) is None or junk[:1] == b"\x45"
        run_bpf(w.program(), junk)  # never an error
