"""The offload unit's shared pieces on both backends: the one header parse, the CSUM_OK marks
of checksum completion, the virtio-net GSO header, and the rule that only a frame whose checksum
verified is handed to a TAP as a GSO frame (a wrong checksum stays wrong)."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from vxlanpy import kernels as kernels_mod
from vxlanpy.abi import Offload
from vxlanpy.batch import FrameBatch
from vxlanpy.headers import parse
from vxlanpy.io import batchio
from vxlanpy.kernels import Backend

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


@pytest.fixture(scope="module")
def c() -> Backend:
    try:
        return kernels_mod.load("cffi")
    except ImportError:
        pytest.skip("the C kernels are not built")


def _frames() -> st.SearchStrategy[bytes]:
    payload = st.binary(max_size=64)
    l4 = st.sampled_from([TCP(sport=1, dport=2), UDP(sport=3, dport=4), Raw(b"\x01\x02")])
    l3 = st.one_of(
        st.builds(
            lambda p, f: IP(src="1.2.3.4", dst="5.6.7.8", frag=f) / p, l4, st.sampled_from([0, 1])
        ),
        st.builds(lambda p: IPv6(src="::1", dst="::2") / p, l4),
    )
    tagged = st.builds(lambda p, n: Dot1Q(vlan=5) / p if n else p, l3, st.booleans())
    built = st.builds(lambda p, pl: bytes(ETH / p / Raw(pl)), tagged, payload)
    cut = st.builds(lambda f, k: f[: max(0, len(f) - k)], built, st.integers(0, 80))
    return st.one_of(built, cut, st.binary(max_size=80))


@settings(deadline=None, max_examples=300)
@given(frame=_frames())
def test_one_parse_on_both_sides(c: Backend, frame: bytes) -> None:
    assert c.parse(frame) == parse(frame)


def _tcp(v6: bool, payload: int, good: bool) -> bytes:
    ip = IPv6(src="2001:db8::1", dst="2001:db8::2") if v6 else IP(src="192.0.2.1", dst="192.0.2.2")
    frame = bytearray(bytes(ETH / ip / TCP(sport=5, dport=6, flags="A") / Raw(b"x" * payload)))
    if not good:
        frame[-1] ^= 0xFF  # one flipped byte: the checksum no longer verifies
    return bytes(frame)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("good", [True, False])
def test_csum_ok_marks_and_gso_header(c: Backend, v6: bool, good: bool) -> None:
    """Both backends mark a verified frame CSUM_OK and build the same GSO header for it."""
    py = kernels_mod.load("python")
    frame = _tcp(v6, 8000, good)
    results = []
    for k in (c, py):
        b = FrameBatch(1, 9000)
        b.append_frame(frame)
        assert k.complete_checksums(b) == 0  # nothing partial here
        ok = bool(b.offload[0] & Offload.CSUM_OK)
        hoff = b.frame_offset(0) - 10
        made = k.vnet_gso(b.buf, b.frame_offset(0), len(frame), 1450, hoff)
        results.append((ok, made, bytes(b.buf[hoff : b.frame_offset(0) + len(frame)])))
    assert results[0] == results[1]
    assert results[0][0] == good
    assert results[0][1]  # vnet_gso itself does not check: its callers do


@pytest.mark.parametrize("backend", ["cffi", "python"])
@pytest.mark.parametrize("good", [True, False])
def test_tap_write_never_launders_a_checksum(c: Backend, backend: str, good: bool) -> None:
    """An oversized TCP frame goes to a TAP as a GSO frame (the kernel then computes a fresh
    checksum) only when its checksum verified; else as it is, so the stack drops it."""
    io = batchio.load(backend)
    k = kernels_mod.load(backend)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    frame = _tcp(False, 8000, good)
    try:
        b = FrameBatch(1, 9000)
        b.append_frame(frame)
        k.complete_checksums(b)
        written, refused = io.tap_write(ours.fileno(), 10, 1450, b, [0])
        assert (written, refused) == (1, 0)
        got = theirs.recv(1 << 16)
    finally:
        ours.close()
        theirs.close()
    hdr, out = got[:10], got[10:]
    csum = 14 + 20 + 16  # the TCP checksum field: the pseudo-header sum for the kernel to finish
    if good:
        assert hdr[0] == 1 and hdr[1] == 1  # NEEDS_CSUM, TCPV4
        assert int.from_bytes(hdr[4:6], "little") == 1450 - 20 - 20  # the MSS that fits
        assert out[:csum] + out[csum + 2 :] == frame[:csum] + frame[csum + 2 :]
    else:
        assert hdr == bytes(10)  # no offload: the wrong checksum reaches the stack as it is
        assert out == frame
