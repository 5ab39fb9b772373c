"""Bad input to ``vxlanpy-tunnel flannel``: one clear line, the right exit code, nothing left.

One etcd member in a namespace, one node (both dataplanes where it matters).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest
from flannel_net import CONFIG, PREFIX, FlannelNet, need_netns

from vxlanpy.netns import Topology


@pytest.fixture(scope="module")
def etcd_net() -> Iterator[FlannelNet]:
    need_netns()
    with Topology() as topo, tempfile.TemporaryDirectory() as tmp:
        fnet = FlannelNet(topo, tmp, ["vxlanpy"], members=1)
        try:
            fnet.etcd.start()
            yield fnet
        finally:
            fnet.etcd.stop()


@pytest.fixture
def net(etcd_net: FlannelNet) -> Iterator[FlannelNet]:
    """The module's network, with an empty etcd for each test."""
    etcd_net.etcd.ctl("del", "--prefix", PREFIX)
    yield etcd_net
    etcd_net.etcd.ctl("del", "--prefix", PREFIX)


def _run(net: FlannelNet, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    h = net.nodes["h1"].host
    argv = ["ip", "netns", "exec", h.ns, sys.executable, "-m", "vxlanpy.cli", "flannel"]
    if "--config" not in args:
        argv += ["--iface", net.dev, "--subnet-file", net.nodes["h1"].env_file]
    argv += args
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def _nothing_left(net: FlannelNet) -> None:
    h = net.nodes["h1"].host
    assert "flannel.1" not in h.ip("link", "show")
    out = net.etcd.ctl("get", "--prefix", f"{PREFIX}/subnets/", "--keys-only")
    assert out.strip() == ""


@pytest.mark.parametrize("backend", ["vxlanpy", "kernel"])
def test_unreachable_etcd_at_start(net: FlannelNet, backend: str) -> None:
    p = _run(
        net,
        "--etcd-endpoints",
        "http://198.18.0.99:2379,http://198.18.0.98:2379",
        "--connect-timeout",
        "2",
        "--backend",
        backend,
    )
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(
        "vxlanpy-tunnel: error: cannot reach etcd at http://198.18.0.99:2379, "
        "http://198.18.0.98:2379 (last error: "
    ), p.stderr
    assert "flannel.1" not in net.nodes["h1"].host.ip("link", "show")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, f"no network config at {PREFIX}/config in etcd"),
        ("{not json", f"{PREFIX}/config: not JSON: Expecting property name"),
        ('{"Network": "198.19.0.0"}', "Network '198.19.0.0' is not an IPv4 CIDR"),
        ('{"Network": "198.19.0.0/16", "SubnetLen": 15}', "at least four subnets"),
        (
            '{"Network": "198.19.0.0/16", "Backend": {"Type": "udp"}}',
            "Backend.Type is 'udp': only 'vxlan' is supported",
        ),
        ('{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan", "VNI": "1"}}', "VNI"),
    ],
)
def test_bad_network_config(net: FlannelNet, config: str | None, message: str) -> None:
    if config is not None:
        net.etcd.ctl("put", f"{PREFIX}/config", config)
    p = _run(net, "--etcd-endpoints", net.endpoints())
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("vxlanpy-tunnel: error: "), p.stderr
    assert message in p.stderr, p.stderr
    _nothing_left(net)


def test_gbp_is_refused_by_the_vxlanpy_dataplane(net: FlannelNet) -> None:
    cfg = dict(CONFIG, Backend={"Type": "vxlan", "GBP": True})
    net.etcd.ctl("put", f"{PREFIX}/config", json.dumps(cfg))
    p = _run(net, "--etcd-endpoints", net.endpoints())
    assert p.returncode == 1, p.stderr
    assert "Backend.GBP is not supported by the vxlanpy dataplane" in p.stderr
    _nothing_left(net)


def test_device_taken(net: FlannelNet) -> None:
    net.etcd.ctl("put", f"{PREFIX}/config", json.dumps(CONFIG))
    h = net.nodes["h1"].host
    h.ip("link", "add", "flannel.1", "type", "bridge")
    p = _run(net, "--etcd-endpoints", net.endpoints(), "--backend", "kernel")
    assert p.returncode == 1, p.stderr
    assert "interface flannel.1 exists already" in p.stderr, p.stderr
    h.ip("link", "del", "flannel.1")
    _nothing_left(net)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--etcd-endpoints", "https://198.18.0.201:2379"], "only http:// is supported"),
        (["--etcd-endpoints", "http://198.18.0.201:99999"], "bad port"),
        (["--public-ip", "239.1.1.1"], "public IP 239.1.1.1 is not a unicast address"),
        (["--lease-ttl", "60", "--renew-margin", "60"], "renew margin must be 1..59"),
        (["--config", "/nonexistent.toml"], "/nonexistent.toml: No such file or directory"),
    ],
)
def test_bad_flags(net: FlannelNet, args: list[str], message: str) -> None:
    p = _run(net, *args, timeout=20)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and message in p.stderr, p.stderr


def test_config_file(net: FlannelNet) -> None:
    net.etcd.ctl("put", f"{PREFIX}/config", json.dumps(CONFIG))
    path = f"{net.tmp}/node.toml"
    with open(path, "w") as f:
        f.write(f'[flannel]\netcd_endpoints = ["{net.etcd.endpoints}"]\nbakend = "kernel"\n')
    p = _run(net, "--config", path)
    assert p.returncode == 2
    assert f"{path}: [flannel]: unknown key 'bakend'" in p.stderr, p.stderr
    with open(path, "w") as f:
        f.write(
            f'[flannel]\netcd_endpoints = ["{net.etcd.endpoints}"]\nbackend = "kernel"\n'
            f'iface = "{net.dev}"\nsubnet_file = "{net.nodes["h1"].env_file}"\n'
            "release_on_exit = true\n"
        )
    h = net.nodes["h1"].host
    agent = h.popen(
        [sys.executable, "-m", "vxlanpy.cli", "flannel", "--config", path],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        assert agent.stderr is not None
        line = agent.stderr.readline().decode()
        assert "flannel: lease 198.19." in line and "kernel dataplane flannel.1" in line, line
        assert "vxlan id 1" in h.ip("-d", "link", "show", "flannel.1")
    finally:
        # its exit revokes the lease in etcd and deletes the device: under a loaded CI that
        # has taken more than stop()'s default 5 s before SIGKILL, which left the device
        rc = net.topo.stop(agent, timeout=20)
    assert rc != -signal.SIGKILL, "the agent did not exit on SIGTERM within 20 s"
    _nothing_left(net)  # released on exit, device removed
