"""The pcapng writer (vxlanpy/pcapng.py) and the capture of trace records (capture.py): read
back by our reader, and by tshark and capinfos (Debian's tshark, installed when missing), which
must decode the synthesized outer packets as VXLAN around the inner frames and show one
comment per packet. Also ``trace`` from a config file on the command line."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from vxlanpy.capture import Capture, outer_packet
from vxlanpy.cli import main
from vxlanpy.framedesc import build_frame
from vxlanpy.netns import NetnsError, ensure_tools
from vxlanpy.pcapng import LINKTYPE_ETHERNET, LINKTYPE_RAW, PcapngWriter, read_pcapng
from vxlanpy.trace import Hop, TraceRecord
from vxlanpy.wire import encode_header

FRAME = build_frame("dst 02:00:00:00:00:09 src 02:00:00:00:00:01 ip 198.19.0.1 198.19.0.9".split())


def _tshark() -> None:
    try:
        ensure_tools({"tshark": "tshark", "capinfos": "tshark"})
    except NetnsError as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise
        pytest.skip(str(exc))


def test_writer_round_trip() -> None:
    f = io.BytesIO()
    w = PcapngWriter(f)
    a = w.add_interface(LINKTYPE_ETHERNET, "overlay", "inner")
    b = w.add_interface(LINKTYPE_RAW, "underlay")
    w.write_packet(a, 1700000000.25, FRAME, "one")
    w.write_packet(b, 1700000001.5, b"\x45" + bytes(22), None)  # odd length: padded
    w.write_packet(a, 1700000002.0, b"x" * 7, "héllo", original_length=100)
    ifaces, pkts = read_pcapng(f.getvalue())
    assert [(i.linktype, i.name, i.description) for i in ifaces] == [
        (LINKTYPE_ETHERNET, "overlay", "inner"),
        (LINKTYPE_RAW, "underlay", ""),
    ]
    assert [(p.interface, p.timestamp, p.data, p.comments) for p in pkts] == [
        (0, 1700000000.25, FRAME, ("one",)),
        (1, 1700000001.5, b"\x45" + bytes(22), ()),
        (0, 1700000002.0, b"x" * 7, ("héllo",)),
    ]
    assert pkts[2].original_length == 100
    with pytest.raises(ValueError):
        w.write_packet(5, 0.0, b"")


def _records() -> list[TraceRecord]:
    payload = encode_header(42) + FRAME
    tx = TraceRecord("tx", 42, "fast-path", "sent", "flood", "tx.4", FRAME, payload)
    tx.remotes = (Hop("198.18.0.2", 4789, 42, 50000), Hop("198.18.0.3", 4789, 43, 50000))
    tx.time = 1700000000.0
    rx = TraceRecord("rx", 42, "engine", "delivered", "deliver", "rx.5", FRAME, payload)
    rx.source, rx.source_port, rx.learn, rx.time = "198.18.0.2", 40000, "new", 1700000001.0
    drop = TraceRecord("rx", None, "engine", "dropped", "no-i-flag", "rx.1", b"", bytes(16))
    drop.source, drop.drop, drop.time = "198.18.0.3", "no-i-flag", 1700000002.0
    return [tx, rx, drop]


def test_capture_packets_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "c.pcapng"
    with open(path, "wb") as f:
        cap = Capture(f, "198.18.0.1")
        for r in _records():
            cap.record(r)
    ifaces, pkts = read_pcapng(path.read_bytes())
    assert [i.name for i in ifaces] == ["overlay", "underlay"]
    # the flood: its inner frame, then a copy per remote; rx: outer then inner; the drop: outer
    assert [p.interface for p in pkts] == [0, 1, 1, 1, 0, 1]
    assert all(len(p.comments) == 1 for p in pkts)
    assert "flood" in pkts[0].comments[0] and "copy 2/2 to 198.18.0.3" in pkts[2].comments[0]
    assert pkts[2].data[28 + 4 : 28 + 7] == (43).to_bytes(3, "big")  # its own VNI
    assert "dropped: no-i-flag" in pkts[5].comments[0]
    _tshark()
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.interface_id", "-e", "vxlan.vni",
         "-e", "ip.src", "-e", "frame.comment"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert len(rows) == 6, out.stdout
    assert [r[0] for r in rows] == ["0", "1", "1", "1", "0", "1"]
    assert [r[1] for r in rows[1:4]] == ["42", "43", "42"]  # tshark decodes the outer VXLAN
    assert rows[3][2].startswith("198.18.0.2")  # received from the peer
    assert all(r[3] for r in rows) and "learn new" in rows[3][3]
    info = subprocess.run(["capinfos", str(path)], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0 and not info.stderr.strip(), info.stderr
    assert "Number of packets:   6" in info.stdout or "Number of packets = 6" in info.stdout


def test_outer_packet_limits() -> None:
    assert outer_packet("198.18.0.1", "198.18.0.2", 1, 4789, bytes(65535 - 28)) is not None
    assert outer_packet("198.18.0.1", "198.18.0.2", 1, 4789, bytes(65535 - 27)) is None
    v6 = outer_packet("2001:db8::1", "2001:db8::2", 1, 4789, b"abc")
    assert v6 is not None and v6[0] >> 4 == 6 and len(v6) == 40 + 8 + 3


def test_trace_from_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "vtep.toml"
    cfg.write_text(
        '[vtep]\nlocal = "198.18.0.1"\n[[segment]]\nvni = 42\nremotes = ["198.18.0.2"]\n'
        'proxy = true\nneigh = [{ip = "198.19.0.9", lladdr = "02:00:00:00:00:09"}]\n'
    )
    assert main(["trace", "-c", str(cfg), "--vni", "42", "arp", "who-has", "198.19.0.9"]) == 0
    text = capsys.readouterr().out
    assert "rule tx.3" in text and "is-at 02:00:00:00:00:09" in text
    argv = ["trace", "-c", str(cfg), "--vni", "42", "--json", "dst", "02:00:00:00:00:07"]
    assert main([*argv, "ip", "198.19.0.1", "198.19.0.7"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["records"][0]["rule"] == "l2-miss"
    assert [d["host"] for d in out["datagrams"]] == ["198.18.0.2"]
    assert main(["trace", "-c", str(cfg), "--datagram", "00" * 16, "--from", "198.18.0.2"]) == 0
    assert "reason no-i-flag" in capsys.readouterr().out
    assert main(["trace", "-c", str(cfg), "--vni", "42", "dst", "nonsense"]) == 2
    assert (
        main(
            [
                "trace",
                "-c",
                str(cfg),
                "--vni",
                "7",
                "dst",
                "02:00:00:00:00:07",
                "ethertype",
                "0x88b5",
            ]
        )
        == 2
    )
