"""The batched device and socket I/O of :mod:`vxlanpy.io.batchio` against the real kernel, for both
backends (C via cffi, and the Python twin), inside a namespace with only ``lo`` up.

The socket part of each test runs inside the namespace as a helper script (written to
``tmp_path``; its input is a JSON file, its output JSON on stdout). The expected bytes are
computed here, independently of the code under test; every test also checks that both backends
produce the same bytes.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from vxlanpy.netns import Host, Topology

BACKENDS = ("cffi", "python")
VNI = 0x12AB34
MAX_FRAME = 1514  # recv/tap batches: room for payloads of up to MAX_FRAME + 8 bytes
ETHERTYPE = b"\x88\xb5"  # IEEE local experimental: nothing in the kernel reacts to it

HELPER = r'''
import json, os, select, socket, subprocess, sys, time

from vxlanpy import kernels
from vxlanpy.io import batchio
from vxlanpy.batch import FrameBatch

LO = "127.0.0.1"
BUF = 1 << 22
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # Linux; not in the socket module before 3.12
# one CPU: loopback delivery (per-CPU backlog) stays in order
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BUF)
    s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, BUF)
    s.bind((LO, 0))
    return s


def drain(sock, keep=lambda data, addr: True, quiet=0.3, limit=1000):
    """Everything that arrives until the socket has been quiet for ``quiet`` seconds."""
    out = []
    deadline = time.monotonic() + 10
    while len(out) < limit and time.monotonic() < deadline:
        if not select.select([sock], [], [], quiet)[0]:
            break
        data, addr = sock.recvfrom(1 << 17)
        if keep(data, addr):
            out.append((data, addr))
    return out


def inbound(data, addr):
    """A frame written to the TAP (not one the kernel sent out of it) with our ethertype."""
    return addr[2] != socket.PACKET_OUTGOING and data[12:14] == b"\x88\xb5"


def batch_of_frames(frames, vni, backend, max_frame=9234, fill=0):
    b = FrameBatch(capacity=max(1, len(frames)), max_frame=max_frame)
    if fill:
        b.buf[:] = bytes([fill]) * len(b.buf)
    for f in frames:
        b.append_frame(bytes.fromhex(f), vni)
    kernels.load(backend).encap_batch(b, 49152, 65535)
    return b


def op_send(args):
    out = {}
    for name in args["backends"]:
        io = batchio.load(name)
        fn = getattr(io, args["fn"])
        b = batch_of_frames(args["frames"], args["vni"], name)
        rx, tx = udp(), udp()
        rx.setblocking(False)
        calls = []
        for first, n in args["ranges"]:
            ret = fn(tx, b, first, n, LO, rx.getsockname()[1])
            got = drain(rx)
            calls.append(
                {
                    "ret": ret,
                    "got": [d.hex() for d, _ in got],
                    "from": sorted({f"{a[0]}:{a[1]}" for _, a in got}),
                }
            )
        out[name] = {
            "calls": calls,
            "payloads": [bytes(b.payload(i)).hex() for i in range(b.count)],
            "tx": f"{LO}:{tx.getsockname()[1]}",
        }
        rx.close()
        tx.close()
    return out


def op_recv(args):
    out = {}
    for name in args["backends"]:
        io = batchio.load(name)
        rx, tx = udp(), udp()
        rx.setblocking(False)
        b = FrameBatch(capacity=args["capacity"], max_frame=args["max_frame"])
        for p in args["prefill"]:
            b.append_payload(bytes.fromhex(p))
        for d in args["datagrams"]:
            tx.sendto(bytes.fromhex(d), rx.getsockname())
        select.select([rx], [], [], 2)
        time.sleep(0.05)
        calls = []
        sources = list(args["prefill_sources"])
        for _ in range(args["max_calls"]):  # bounded: stops at the first call that reads nothing
            if b.full():
                b.clear()
                sources = []
            ret = io.udp_recv(rx, b, sources)
            calls.append(
                {
                    "ret": list(ret),
                    "count": b.count,
                    "payloads": [bytes(b.payload(i)).hex() for i in range(b.count)],
                    "sources": list(sources),
                }
            )
            if ret == (0, 0):
                break
        out[name] = calls
        rx.close()
        tx.close()
    return out


def op_tap(args):
    from vxlanpy.io.tap import Tap

    out = {}
    for k, name in enumerate(args["backends"]):
        io = batchio.load(name)
        tap = Tap(f"fio{k}", mtu=1500, offload=args["offload"])
        ps = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        ps.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BUF)
        ps.bind((tap.name, 0x0003))
        drain(ps, quiet=0.05)  # whatever the kernel said when the link came up
        # junk in the headroom: only a zeroed virtio-net header may reach the kernel
        b = batch_of_frames(args["frames"], VNI, name, max_frame=1514, fill=0xAA)
        ret = io.tap_write(tap.fd, tap.vnet, tap.mtu, b, args["slots"])
        got = drain(ps, keep=inbound)
        vnet_zero = all(
            not any(b.buf[b.frame_offset(i) - tap.vnet : b.frame_offset(i)]) for i in args["slots"]
        )
        # the device goes away under the open fd: reported as gone, nothing counted as refused
        subprocess.run(["ip", "link", "del", tap.name], check=True)
        gone = io.tap_write(tap.fd, tap.vnet, tap.mtu, b, args["slots"][:2])
        tap.close()
        ps.close()
        out[name] = {
            "ret": list(ret),
            "got": [d.hex() for d, _ in got],
            "vnet": tap.vnet,
            "vnet_zero": vnet_zero,
            "gone": list(gone),
        }
    return out


VNI = 0x12AB34
args = json.loads(open(sys.argv[1]).read())
print(json.dumps(globals()["op_" + args["op"]](args)))
'''


@pytest.fixture
def ns(topo: Topology) -> Host:
    return topo.add_host("fio")  # lo up, nothing else


def _run(host: Host, tmp_path: Path, **args: Any) -> dict[str, Any]:
    """Run the helper in ``host``'s namespace for both backends; its JSON answer."""
    script = tmp_path / "batchio_helper.py"
    script.write_text(HELPER)
    inp = tmp_path / f"in-{args['op']}.json"
    inp.write_text(json.dumps({"backends": list(BACKENDS), **args}))
    out: dict[str, Any] = json.loads(host.sh(sys.executable, str(script), str(inp), timeout=60))
    assert sorted(out) == sorted(BACKENDS)
    return out


def _vxlan(frame: bytes, vni: int = VNI) -> bytes:
    """The UDP payload encap_batch must produce: I flag, VNI, then the frame."""
    return b"\x08\x00\x00\x00" + vni.to_bytes(3, "big") + b"\x00" + frame


def _frames(rng: random.Random, lengths: list[int]) -> list[bytes]:
    return [rng.randbytes(n) for n in lengths]


def _eth_frames(rng: random.Random, lengths: list[int]) -> list[bytes]:
    """Ethernet frames (locally administered unicast MACs, ETHERTYPE) of the given lengths."""
    return [
        (b"\x02" + rng.randbytes(5) + b"\x02" + rng.randbytes(5) + ETHERTYPE + rng.randbytes(n))[:n]
        for n in lengths
    ]


# --- udp_send: sendmmsg ------------------------------------------------------------------------


def test_send_batch(ns: Host, tmp_path: Path) -> None:
    rng = random.Random(1)
    n = 100  # more than one sendmmsg chunk (64)
    frames = _frames(rng, [14, 1500] + [rng.randint(14, 1500) for _ in range(n - 2)])
    expected = [_vxlan(f) for f in frames]
    ranges = [(0, n), (37, 5), (n - 1, 1)]
    out = _run(
        ns,
        tmp_path,
        op="send",
        fn="udp_send",
        vni=VNI,
        frames=[f.hex() for f in frames],
        ranges=ranges,
    )
    for name, res in out.items():
        assert [bytes.fromhex(p) for p in res["payloads"]] == expected, name
        for (first, k), call in zip(ranges, res["calls"], strict=True):
            assert call["ret"] == k, (name, first, k)
            got = [bytes.fromhex(d) for d in call["got"]]
            assert len(got) == k, (name, first, k)
            assert got == expected[first : first + k], (name, first, k)
            assert call["from"] == [res["tx"]], name  # from the socket we passed
    assert [c["got"] for c in out["cffi"]["calls"]] == [c["got"] for c in out["python"]["calls"]]


# --- udp_send: runs of equal size as UDP GSO sends ---------------------------------------------

GSO_CASES = {
    # TSO-like: 1472-byte payloads, the 65000-byte limit cuts chunks of 44
    "tso-1472": [1472] * 99 + [1000],
    "tso-1472-no-short-last": [1472] * 100,
    # small segments: the 64-segment limit cuts the chunks
    "small-200": [200] * 99 + [37],
    "one": [500],
    "two-short-last": [1472, 22],
    # contract broken: a shorter payload in the middle ends a GSO chunk, nothing is lost
    "short-middle": [1472] * 30 + [300] + [1472] * 30 + [900],
}


@pytest.mark.parametrize("sizes", list(GSO_CASES.values()), ids=list(GSO_CASES))
def test_send_gso(ns: Host, tmp_path: Path, sizes: list[int]) -> None:
    rng = random.Random(len(sizes) * 7 + sizes[-1])
    frames = _frames(rng, [s - 8 for s in sizes])
    expected = [_vxlan(f) for f in frames]
    n = len(sizes)
    ranges = [(0, n)] + ([(3, n - 3)] if n > 3 else [])
    out = _run(
        ns,
        tmp_path,
        op="send",
        fn="udp_send",
        vni=VNI,
        frames=[f.hex() for f in frames],
        ranges=ranges,
    )
    for name, res in out.items():
        for (first, k), call in zip(ranges, res["calls"], strict=True):
            got = [bytes.fromhex(d) for d in call["got"]]
            assert call["ret"] == k, (name, first, k, call["ret"])
            assert len(got) == k, (name, first, k)  # separate datagrams: no GRO at the receiver
            assert got == expected[first : first + k], (name, first, k)
            assert call["from"] == [res["tx"]], name
    assert [c["got"] for c in out["cffi"]["calls"]] == [c["got"] for c in out["python"]["calls"]]


def test_send_gso_longer_middle(ns: Host, tmp_path: Path) -> None:
    """A payload longer than the first in the middle ends a GSO run and starts another: the
    receiver gets everything, in order."""
    rng = random.Random(5)
    sizes = [1000] * 5 + [1400] + [1000] * 5
    frames = _frames(rng, [s - 8 for s in sizes])
    expected = [_vxlan(f) for f in frames]
    out = _run(
        ns,
        tmp_path,
        op="send",
        fn="udp_send",
        vni=VNI,
        frames=[f.hex() for f in frames],
        ranges=[(0, len(sizes))],
    )
    for name, res in out.items():
        (call,) = res["calls"]
        assert call["ret"] == len(sizes), name
        assert [bytes.fromhex(d) for d in call["got"]] == expected, name


# --- udp_recv ----------------------------------------------------------------------------------


def test_recv_batch(ns: Host, tmp_path: Path) -> None:
    rng = random.Random(3)
    limit = MAX_FRAME + 8  # the largest payload a slot keeps
    sizes = [limit + 1, 100, 8, limit, 1]  # oversized first: every kept one moves down
    sizes += [rng.randint(8, limit) for _ in range(12)] + [4000]  # oversized in the middle
    sizes += [rng.randint(8, limit) for _ in range(12)] + [9000]  # and last
    datagrams = [rng.randbytes(s) for s in sizes]
    kept = [d for d in datagrams if len(d) <= limit]
    pre = rng.randbytes(60)
    out = _run(
        ns,
        tmp_path,
        op="recv",
        datagrams=[d.hex() for d in datagrams],
        capacity=64,
        max_frame=MAX_FRAME,
        prefill=[pre.hex()],
        prefill_sources=["pre"],
        max_calls=4,
    )
    for name, calls in out.items():
        assert len(calls) == 2, (name, calls)
        first, second = calls
        assert first["ret"] == [len(kept), 3], name
        assert first["count"] == 1 + len(kept), name  # from slot 1: slot 0 was in use
        payloads = [bytes.fromhex(p) for p in first["payloads"]]
        assert payloads[0] == pre, name  # untouched
        assert payloads[1:] == kept, name  # byte for byte, in order, no gap
        assert first["sources"] == ["pre"] + ["127.0.0.1"] * len(kept), name  # appended
        assert second["ret"] == [0, 0] and second["count"] == first["count"], name
    assert out["cffi"] == out["python"]


def test_recv_batch_fills_the_batch(ns: Host, tmp_path: Path) -> None:
    """More datagrams than slots: calls (emptying the batch when full, as the transport does)
    read them all, in order, never more than the batch holds, the oversized one counted."""
    rng = random.Random(4)
    sizes = [rng.randint(8, 1522) for _ in range(20)]
    sizes[3] = 3000
    datagrams = [rng.randbytes(s) for s in sizes]
    out = _run(
        ns,
        tmp_path,
        op="recv",
        datagrams=[d.hex() for d in datagrams],
        capacity=8,
        max_frame=MAX_FRAME,
        prefill=[],
        prefill_sources=[],
        max_calls=12,
    )
    results = {}
    for name, calls in out.items():
        assert calls[-1]["ret"] == [0, 0], name
        got: list[bytes] = []
        truncated = 0
        for c in calls:
            n, t = c["ret"]
            truncated += t
            assert c["count"] <= 8, name
            assert len(c["sources"]) == c["count"], name
            # this call's datagrams are the last n slots
            got += [bytes.fromhex(p) for p in c["payloads"][c["count"] - n :]]
        assert truncated == 1, name
        assert got == [d for d in datagrams if len(d) <= 1522], name
        results[name] = got
    # how many one call reads may differ (recvmmsg reads `free slots` datagrams, the twin
    # reads until the slots are full); what the calls read together may not
    assert results["cffi"] == results["python"]


@pytest.mark.parametrize("backend", ["cffi", "python"])
def test_recv_batch_empty_datagram_next_to_oversized(
    ns: Host, tmp_path: Path, backend: str
) -> None:
    """An empty datagram is not oversized: it is kept (and the VXLAN decap rejects it) whether
    or not an oversized datagram arrived in the same call."""
    datagrams = [b"a" * 30, b"B" * 3000, b"", b"c" * 40]
    out = _run(
        ns,
        tmp_path,
        op="recv",
        datagrams=[d.hex() for d in datagrams],
        capacity=8,
        max_frame=MAX_FRAME,
        prefill=[],
        prefill_sources=[],
        max_calls=3,
    )
    first = out[backend][0]
    assert first["ret"] == [3, 1]
    assert [bytes.fromhex(p) for p in first["payloads"]] == [b"a" * 30, b"", b"c" * 40]
    assert first["sources"] == ["127.0.0.1"] * 3


# --- tap_write ---------------------------------------------------------------------------------


@pytest.mark.parametrize("offload", [False, True], ids=["plain", "vnet-hdr"])
def test_tap_write(ns: Host, tmp_path: Path, offload: bool) -> None:
    rng = random.Random(6 + offload)
    lengths = [14, 1514, 6] + [rng.randint(14, 1514) for _ in range(29)]  # slot 2: too short
    frames = _eth_frames(rng, lengths)
    slots = list(range(len(frames)))
    rng.shuffle(slots)
    slots = slots[:24]  # a subset, out of order
    if 2 not in slots:
        slots[5] = 2
    good = [i for i in slots if lengths[i] >= 14]
    out = _run(
        ns, tmp_path, op="tap", offload=offload, frames=[f.hex() for f in frames], slots=slots
    )
    for name, res in out.items():
        assert res["vnet"] == (10 if offload else 0), name
        assert res["ret"] == [len(good), 1], name  # the 6-byte frame refused and counted
        got = [bytes.fromhex(d) for d in res["got"]]
        assert got == [frames[i] for i in good], name  # unchanged, no virtio header, in order
        if offload:
            assert res["vnet_zero"], name  # a zeroed header went in front of each frame
        assert res["gone"][0] < 0 and res["gone"][1] == 0, (name, res["gone"])
    assert out["cffi"]["got"] == out["python"]["got"]
    assert out["cffi"]["gone"] == out["python"]["gone"]
