"""Write the seed corpora (small, committed): ``python fuzz/make_seeds.py``."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from targets import rx_input  # noqa: E402

from vxlanpy.wire import encapsulate  # noqa: E402

A, B = bytes.fromhex("020000000002"), bytes.fromhex("020000000003")


def _ipv4(proto: int, payload: bytes) -> bytes:
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        1,
        0,
        64,
        proto,
        0,
        bytes([198, 19, 0, 2]),
        bytes([198, 19, 0, 1]),
    )
    return hdr + payload


def _frames() -> dict[str, bytes]:
    eth = B + A
    arp = eth + b"\x08\x06" + bytes.fromhex("0001080006040001") + A + bytes([198, 19, 0, 2])
    arp += bytes(6) + bytes([198, 19, 0, 1])
    udp = struct.pack("!HHHH", 1000, 2000, 8 + 4, 0x1234) + b"ping"
    tcp = struct.pack("!HHIIBBHHH", 1000, 2000, 1, 0, 0x50, 0x18, 512, 0x4567, 0) + b"data" * 8
    vlan = eth + b"\x81\x00\x00\x07\x08\x00" + _ipv4(17, udp)
    return {
        "arp": arp,
        "udp": eth + b"\x08\x00" + _ipv4(17, udp),
        "tcp": eth + b"\x08\x00" + _ipv4(6, tcp),
        "vlan": vlan,
        "broadcast-src": b"\xff" * 12 + b"\x08\x00" + _ipv4(17, udp),
    }


def main() -> None:
    rx = {}
    frames = _frames()
    for name, f in frames.items():
        rx[name] = rx_input(2, [(0, encapsulate(f, vni=42))])
    rx["several"] = rx_input(
        2 | 4 | 8,
        [(k % 3, encapsulate(f, vni=42 if k % 4 else 7)) for k, f in enumerate(frames.values())],
    )
    rx["short-header"] = rx_input(3, [(0, b"\x08\x00\x00"), (1, encapsulate(b"", vni=42))])
    control = {
        "stats": {"cmd": "stats"},
        "config": {"cmd": "config"},
        "fdb-show": {"cmd": "fdb", "op": "show"},
        "fdb-add": {
            "cmd": "fdb",
            "op": "add",
            "vni": 42,
            "mac": "02:00:00:00:00:09",
            "dst": "198.18.0.9",
            "port": 8472,
            "remote_vni": 7,
        },
        "fdb-del": {
            "cmd": "fdb",
            "op": "del",
            "vni": 42,
            "mac": "00:00:00:00:00:00",
            "dst": "198.18.0.2",
        },
        "neigh-add": {
            "cmd": "neigh",
            "op": "add",
            "vni": 42,
            "ip": "198.19.0.9",
            "lladdr": "02:00:00:00:00:09",
        },
        "neigh-show": {"cmd": "neigh", "op": "show", "vni": 7},
    }
    config = {
        "minimal": "[[segment]]\nvni = 7\n",
        "full": (HERE / "seed-config.toml").read_text(),  # tests/test_config.py GOOD
    }
    out = {
        "rx-python": rx,
        "rx-cffi": rx,
        "rx-compare": rx,
        "rx-datapath": {k: bytes([v[0] | 0x42]) + v[1:] for k, v in rx.items()},
        "control": {k: json.dumps(v).encode() + b"\n" for k, v in control.items()},
        "config": {k: v.encode() for k, v in config.items()},
        "table": {"fdb-add": b"\x00\x05" + b"add 02:00:00:00:00:09 dst 198.18.0.9"},
    }
    for target, seeds in out.items():
        d = HERE / "corpus" / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (d / name).write_bytes(data)


if __name__ == "__main__":
    main()
