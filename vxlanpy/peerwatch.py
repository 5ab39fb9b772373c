"""The peer watch: a warning, once per peer VTEP, when its packets show it expects other
settings than this VTEP's (no I/O here; io/peersock.py reads the packets).

What a UDP socket hides, the outer headers, is read from copies of a few packets: a classic
BPF program (:func:`program`) run by the kernel on every packet the underlay receives keeps
only those that differ from what this VTEP does, so a peer that matches costs a few BPF
instructions a packet and nothing more:

- ``zero-checksum``: the peer sends zero outer UDP checksums while this VTEP sends them
  (an RFC 7348 / Open vSwitch style peer: it may drop this VTEP's partial checksums on a veth);
- ``checksum``: the peer sends checksums while this VTEP sends zeros, over IPv6 (such a peer
  drops zeros unless it has ``udp6zerocsumrx``; over IPv4 every receiver takes zeros, and with
  the ``ovs`` profile the peers are Open vSwitch, which takes them: not watched then);
- ``reserved-bits``: reserved VXLAN header bits set (an extension this VTEP does not speak:
  GBP, GPE, ...; dropped with ``strict``);
- ``fragments``: the outer packets arrive fragmented (the peer's MTU is larger than the
  path's; RFC 7348 VTEPs must not fragment).

A peer is warned about once (at most ``max_peers`` peers); the warned ones (the first
:data:`FILTERED` of them) are then left out by the BPF program itself.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence

from .events import PeerMismatch

__all__ = ["PeerWatch", "program", "FILTERED"]

FILTERED = 64  # warned peers the BPF program leaves out (beyond: dropped in Python)
SNAP = 128  # bytes of a kept packet: the headers
# classic BPF opcodes (linux/filter.h)
_LD_W_ABS, _LD_H_ABS, _LD_B_ABS = 0x20, 0x28, 0x30
_LD_H_IND, _LD_W_IND, _LD_B_IND = 0x48, 0x40, 0x50
_LDX_B_MSH, _LDX_IMM = 0xB1, 0x01
_JEQ, _JSET, _RET, _JA = 0x15, 0x45, 0x06, 0x05
_AD_IFINDEX = 0xFFFFF000 + 8  # SKF_AD_OFF + SKF_AD_IFINDEX: the packet's interface index
_RESERVED = 0xF7FFFFFF  # the first header word but the I flag
_GBP_BITS = 0x80000000 | 0x00400000 | 0x00080000 | 0x0000FFFF  # G, D, A, the policy ID

Insn = tuple[int, int, int, int]  # code, jt, jf, k

_HINTS = {
    "zero-checksum": "it sends zero UDP checksums (RFC 7348 / Open vSwitch style); if it drops "
    "this VTEP's datagrams, send zeros too (--noudpcsum, --udp6zerocsumtx, --profile ovs)",
    "checksum": "it sends UDP checksums over IPv6 while this VTEP sends zeros: unless it takes "
    "zeros (the kernel's udp6zerocsumrx) it drops this VTEP's datagrams",
    "reserved-bits": "it sets reserved VXLAN header bits (an extension: GBP, GPE, ...); --strict "
    "drops such packets",
    "fragments": "its outer packets arrive fragmented: its MTU is larger than the path's "
    "(lower it, or set DF on it)",
}


def _reserved_mask(gbp: bool) -> int:
    return _RESERVED & ~_GBP_BITS if gbp else _RESERVED


def program(
    v6: bool,
    port: int,
    zero_tx: bool,
    gbp: bool = False,
    skip: Iterable[str] = (),
    zeros_taken: bool = False,
    devices: Iterable[int] = (),
) -> list[Insn]:
    """The BPF program (for an AF_PACKET SOCK_DGRAM socket: offset 0 is the IP header) that
    keeps the VXLAN packets to ``port`` that differ from this VTEP's ways (``zero_tx``: it sends
    zero checksums; ``gbp``: the GBP bits are not reserved), from peers not in ``skip``.
    ``zeros_taken``: the peers are known to take zero checksums (IPv4; Open vSwitch), so a
    peer's own checksums say nothing when this VTEP sends zeros. ``devices``: interface
    indexes whose packets are not watched (the TAPs: what they carry is the overlay's)."""
    a: list[Insn | str | tuple[int, str | int, str | int, int | str]] = []
    for ifindex in list(devices)[:FILTERED]:
        a += [(_LD_W_ABS, 0, 0, _AD_IFINDEX), (_JEQ, 0, 1, ifindex), (_RET, 0, 0, 0)]
    if v6:  # UDP at 40, or behind a fragment header (the first fragment's) at 48
        a += [(_LD_B_ABS, 0, 0, 6), (_JEQ, "u40", 0, 17), (_JEQ, 0, "d0", 44)]
        a += [(_LD_B_ABS, 0, 0, 40), (_JEQ, 0, "d0", 17), (_LD_H_ABS, 0, 0, 42)]
        a += [(_JSET, "d0", 0, 0xFFF8), (_LDX_IMM, 0, 0, 48), (_JA, 0, 0, "port")]
        a += ["d0", (_RET, 0, 0, 0), "u40", (_LDX_IMM, 0, 0, 40), "port"]
    else:  # a later fragment has no UDP header: not kept
        a += [(_LD_B_ABS, 0, 0, 9), (_JEQ, 0, "d0", 17), (_LD_H_ABS, 0, 0, 6)]
        a += [(_JSET, "d0", 0, 0x1FFF), (_LDX_B_MSH, 0, 0, 0), (_JA, 0, 0, "port")]
        a += ["d0", (_RET, 0, 0, 0), "port"]
    a += [(_LD_H_IND, 0, 0, 2), (_JEQ, "p_ok", 0, port), (_RET, 0, 0, 0), "p_ok"]
    for j, peer in enumerate(list(skip)[:FILTERED]):  # each: all words equal -> not kept
        raw = ipaddress.ip_address(peer).packed
        if len(raw) != (16 if v6 else 4):
            continue
        base = 8 if v6 else 12
        for i, w in enumerate(struct.unpack(f"!{len(raw) // 4}I", raw)):
            a += [(_LD_W_ABS, 0, 0, base + 4 * i), (_JEQ, 0, f"s{j}", w)]
        a += [(_RET, 0, 0, 0), f"s{j}"]
    if v6:
        a += [(_LD_B_ABS, 0, 0, 6), (_JEQ, "keep", 0, 44)]  # a first fragment
    else:
        a += [(_LD_H_ABS, 0, 0, 6), (_JSET, "keep", 0, 0x2000)]  # MF set: a first fragment
    if not zero_tx:  # the UDP checksum: kept if it is zero while ours are not
        a += [(_LD_H_IND, 0, 0, 6), (_JEQ, "keep", 0, 0)]
    elif not zeros_taken:  # ... or not zero while ours are
        a += [(_LD_H_IND, 0, 0, 6), (_JEQ, 0, "keep", 0)]
    a += [(_LD_W_IND, 0, 0, 8), (_JSET, "keep", 0, _reserved_mask(gbp))]
    a += [(_LD_B_IND, 0, 0, 15), (_JEQ, 0, "keep", 0), (_RET, 0, 0, 0)]
    a += ["keep", (_RET, 0, 0, SNAP)]
    return _assemble(a)


def _assemble(items: Sequence[object]) -> list[Insn]:
    """Instructions with label names as jump targets (jt, jf; k of a JA) -> offsets."""
    labels: dict[str, int] = {}
    insns: list[tuple[int, object, object, object]] = []
    for it in items:
        if isinstance(it, str):
            labels[it] = len(insns)
        else:
            assert isinstance(it, tuple)
            insns.append(it)

    def rel(v: object, at: int) -> int:
        off = labels[v] - at - 1 if isinstance(v, str) else int(v)  # type: ignore[call-overload]
        assert 0 <= off, (v, off)
        return off

    out: list[Insn] = []
    for at, (code, jt, jf, k) in enumerate(insns):
        if code == _JA:
            out.append((code, 0, 0, rel(k, at)))
        else:
            t, f = rel(jt, at), rel(jf, at)
            assert t < 256 and f < 256, (at, t, f)
            out.append((code, t, f, int(k)))  # type: ignore[call-overload]
    return out


class PeerWatch:
    """Decides, from the packets the BPF program kept, which peers to warn about (once)."""

    def __init__(
        self,
        v6: bool,
        port: int,
        zero_tx: bool,
        gbp: bool = False,
        max_peers: int = 1024,
        zeros_taken: bool = False,
        devices: Iterable[int] = (),
    ) -> None:
        """``zeros_taken``, ``devices``: see :func:`program`."""
        self.v6, self.port, self.zero_tx, self.gbp = v6, port, zero_tx, gbp
        self.zeros_taken = zeros_taken
        self.devices = tuple(devices)
        self.max_peers = max_peers
        self.warned: dict[str, tuple[str, ...]] = {}  # peer -> what it was warned about

    def program(self) -> list[Insn]:
        """The BPF program to install now (the warned peers left out)."""
        return program(
            self.v6, self.port, self.zero_tx, self.gbp, self.warned, self.zeros_taken, self.devices
        )

    def packet(self, data: bytes) -> PeerMismatch | None:
        """A packet the program kept (from its IP header on): the event to emit if it is the
        first from a peer that differs, else None. Caller: re-install :meth:`program` after an
        event, while fewer than FILTERED peers were warned."""
        parsed = self._parse(data)
        if parsed is None:
            return None
        peer, kinds = parsed
        if not kinds or peer in self.warned or len(self.warned) >= self.max_peers:
            return None
        self.warned[peer] = kinds
        hint = "; ".join(_HINTS[k] for k in kinds)
        return PeerMismatch(remote=peer, kinds=kinds, hint=hint)

    def _parse(self, d: bytes) -> tuple[str, tuple[str, ...]] | None:
        try:
            if self.v6:
                peer = str(ipaddress.IPv6Address(d[8:24]))
                nh, udp, frag = d[6], 40, False
                if nh == 44:
                    nh, udp, frag = d[40], 48, True
                if nh != 17:
                    return None
            else:
                peer = str(ipaddress.IPv4Address(d[12:16]))
                if d[9] != 17:
                    return None
                udp = (d[0] & 0xF) * 4
                frag = bool(struct.unpack_from("!H", d, 6)[0] & 0x3FFF)
            dport, csum = struct.unpack_from("!H2xH", d, udp + 2)
            if dport != self.port:
                return None
            kinds: list[str] = []
            if frag:
                kinds.append("fragments")
            if csum == 0 and not self.zero_tx:
                kinds.append("zero-checksum")
            elif csum != 0 and self.zero_tx and not self.zeros_taken:
                kinds.append("checksum")
            if len(d) >= udp + 16:
                w0 = struct.unpack_from("!I", d, udp + 8)[0]
                if w0 & _reserved_mask(self.gbp) or d[udp + 15]:
                    kinds.append("reserved-bits")
        except (IndexError, struct.error, ValueError):
            return None
        return peer, tuple(kinds)
