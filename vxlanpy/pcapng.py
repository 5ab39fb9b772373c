"""A small pcapng writer (and a reader, for tests): section header, one interface description
per link, enhanced packet blocks with a comment each (draft-ietf-opsawg-pcapng).

Blocks are written in the machine's byte order, as the format allows (the byte-order magic
tells readers); timestamps in microseconds (the default ``if_tsresol``).
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from typing import BinaryIO

__all__ = [
    "LINKTYPE_ETHERNET",
    "LINKTYPE_RAW",
    "PcapngWriter",
    "PcapngError",
    "Interface",
    "Packet",
    "read_pcapng",
]

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # a raw IPv4 or IPv6 packet, no link header

_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
_MAGIC = 0x1A2B3C4D
_OPT_END, _OPT_COMMENT = 0, 1
_IF_NAME, _IF_DESCRIPTION = 2, 3
_SHB_USERAPPL = 4
_BO = "<" if sys.byteorder == "little" else ">"


class PcapngError(ValueError):
    """A file that is not pcapng as this module writes it."""


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


def _options(opts: list[tuple[int, bytes]]) -> bytes:
    if not opts:
        return b""
    out = bytearray()
    for code, value in opts:
        out += struct.pack(_BO + "HH", code, len(value)) + value + bytes(_pad(len(value)))
    return bytes(out + struct.pack(_BO + "HH", _OPT_END, 0))


def _block(kind: int, body: bytes) -> bytes:
    n = 12 + len(body)
    return struct.pack(_BO + "II", kind, n) + body + struct.pack(_BO + "I", n)


class PcapngWriter:
    """Write pcapng to ``f`` (a binary file): the section header now, then interfaces and
    packets as they are added."""

    def __init__(self, f: BinaryIO, application: str = "vxlanpy") -> None:
        self.f = f
        self.interfaces = 0
        self.packets = 0
        body = struct.pack(_BO + "IHHq", _MAGIC, 1, 0, -1)
        body += _options([(_SHB_USERAPPL, application.encode())])
        f.write(_block(_SHB, body))

    def add_interface(self, linktype: int, name: str, description: str = "") -> int:
        """Describe an interface (its link type); returns its id for :meth:`write_packet`."""
        opts = [(_IF_NAME, name.encode())]
        if description:
            opts.append((_IF_DESCRIPTION, description.encode()))
        self.f.write(_block(_IDB, struct.pack(_BO + "HHI", linktype, 0, 0) + _options(opts)))
        self.interfaces += 1
        return self.interfaces - 1

    def write_packet(
        self,
        interface: int,
        timestamp: float,
        data: bytes,
        comment: str | None = None,
        original_length: int | None = None,
    ) -> None:
        """One packet on ``interface`` at ``timestamp`` (seconds since the epoch), with an
        ``opt_comment`` if ``comment``."""
        if not 0 <= interface < self.interfaces:
            raise ValueError(f"no interface {interface}")
        us = max(0, round(timestamp * 1_000_000))
        orig = len(data) if original_length is None else original_length
        body = struct.pack(_BO + "IIIII", interface, us >> 32, us & 0xFFFFFFFF, len(data), orig)
        body += data + bytes(_pad(len(data)))
        body += _options([(_OPT_COMMENT, comment.encode())] if comment else [])
        self.f.write(_block(_EPB, body))
        self.packets += 1

    def flush(self) -> None:
        self.f.flush()


@dataclass(frozen=True)
class Interface:
    linktype: int
    name: str
    description: str


@dataclass(frozen=True)
class Packet:
    interface: int
    timestamp: float
    data: bytes
    original_length: int
    comments: tuple[str, ...]


def _read_options(raw: bytes, bo: str) -> list[tuple[int, bytes]]:
    out = []
    off = 0
    while off + 4 <= len(raw):
        code, n = struct.unpack_from(bo + "HH", raw, off)
        off += 4
        if code == _OPT_END:
            break
        out.append((code, raw[off : off + n]))
        off += n + _pad(n)
    return out


def read_pcapng(data: bytes) -> tuple[list[Interface], list[Packet]]:
    """The interfaces and packets of one pcapng section (other blocks are skipped);
    PcapngError if ``data`` is not pcapng."""
    if len(data) < 28 or struct.unpack_from("<I", data)[0] != _SHB:
        raise PcapngError("not a pcapng file (no section header block)")
    bo = "<" if struct.unpack_from("<I", data, 8)[0] == _MAGIC else ">"
    if struct.unpack_from(bo + "I", data, 8)[0] != _MAGIC:
        raise PcapngError("bad byte-order magic")
    ifaces: list[Interface] = []
    packets: list[Packet] = []
    off = 0
    while off < len(data):
        if off + 12 > len(data):
            raise PcapngError(f"truncated block at {off}")
        kind, n = struct.unpack_from(bo + "II", data, off)
        if n < 12 or n % 4 or off + n > len(data):
            raise PcapngError(f"bad block length {n} at {off}")
        if struct.unpack_from(bo + "I", data, off + n - 4)[0] != n:
            raise PcapngError(f"block lengths differ at {off}")
        body = data[off + 8 : off + n - 4]
        if kind == _IDB:
            linktype = struct.unpack_from(bo + "H", body)[0]
            iopts = dict(_read_options(body[8:], bo))
            name = iopts.get(_IF_NAME, b"").decode()
            ifaces.append(Interface(linktype, name, iopts.get(_IF_DESCRIPTION, b"").decode()))
        elif kind == _EPB:
            iface, hi, lo, cap, orig = struct.unpack_from(bo + "IIIII", body)
            pkt = body[20 : 20 + cap]
            opts = _read_options(body[20 + cap + _pad(cap) :], bo)
            comments = tuple(v.decode() for c, v in opts if c == _OPT_COMMENT)
            packets.append(Packet(iface, ((hi << 32) | lo) / 1e6, pkt, orig, comments))
        off += n
    return ifaces, packets
