"""``--tunnel-gso`` against the kernel's vxlan: TCP super-frames leave whole as UDP-tunnel GSO
packets (through the redirected TAP of io/tgso.py), the data arrives intact both ways, and the
kernel peer's vxlan device receives one packet per super-frame instead of one per datagram.
On a kernel without UDP-tunnel GSO on TAPs the flag is a clear start-up error."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Vxlanpy, ping, tcp_transfer

from vxlanpy.control import request
from vxlanpy.io.tgso import probe
from vxlanpy.netns import Host, Topology, wait_for

MB = 1_000_000
UA, UB = "198.18.0.1", "198.18.0.2"


def _rx(h: Host) -> int:
    return int(h.sh("cat", "/sys/class/net/vx0/statistics/rx_packets"))


def _args(*extra: str) -> list[str]:
    return ["--vni", "120", "--local", UA, "--remote", UB, "--tap", "vx0"] + [
        "--address",
        "198.19.0.1/24",
        *extra,
    ]


@pytest.mark.parametrize("sender", [True, False], ids=["send-thread", "one-thread"])
def test_tcp_super_frames_leave_whole(topo: Topology, tmp_path: Path, sender: bool) -> None:
    a, b = topo.add_host("a"), topo.add_host("b")
    dev = topo.link(a, b, f"{UA}/24", f"{UB}/24")
    topo.kernel_vxlan(b, vni=120, dev=dev, remote=UA, address="198.19.0.2/24")
    why = probe()
    sock = str(tmp_path / "a.sock")
    extra = ["--tunnel-gso", "--control", sock] + ([] if sender else ["--no-send-thread"])
    if why is not None:  # a kernel without it: refused at start, in one line
        with pytest.raises(AssertionError, match="UDP-tunnel GSO"):
            Vxlanpy(topo, a, _args(*extra))
        return
    v = Vxlanpy(topo, a, _args(*extra))
    ping(a, "198.19.0.2")
    # the link to b is installed within a refresh period (the neighbour is resolved by now)
    linked = lambda: request(sock, {"cmd": "stats"})["tunnel_gso"]["remotes_linked"]  # noqa: E731
    assert wait_for(lambda: linked() == 1, 5), linked()
    rx0 = _rx(b)
    tcp_transfer(a, b, "198.19.0.2", 40 * MB)
    got = _rx(b) - rx0
    tcp_transfer(b, a, "198.19.0.1", 20 * MB, port=5002)
    assert v.stop() == 0
    st = v.stats()
    tg = st["tunnel_gso"]
    assert isinstance(tg, dict) and tg["on"] and tg["remotes_linked"] == 1, tg
    frames = int(tg["frames"])
    # 40 MB in datagrams of at most 1450 bytes would be 27,000+ packets at b's vxlan device;
    # sent whole, each super-frame is one (plus the small frames and the first, cut ones)
    assert frames > 0 and got < 40 * MB / 1450 / 4, (frames, got)
    assert st["losses"]["total"] == 0, st["losses"]  # type: ignore[index]
    assert st["socket_errors"] == {}, st["socket_errors"]
