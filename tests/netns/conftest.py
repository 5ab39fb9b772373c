"""Fixtures for tests that build network namespaces and run vxlanpy against the kernel's vxlan.

They need root (CI runs as root). Without privileges they skip, except under CI=true, where a
skip would hide a broken run: there they fail instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from vxlanpy.netns import Host, Topology, have_netns, wait_for

XFER = str(Path(__file__).with_name("xfer.py"))


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def topo() -> Iterator[Topology]:
    if not have_netns():
        msg = "needs root, iproute2 and /dev/net/tun to build network namespaces"
        if _in_ci():
            pytest.fail(f"CI=true but {msg}")
        pytest.skip(msg)
    t = Topology()
    try:
        yield t
    finally:
        t.close()


class Vxlanpy:
    """A ``vxlanpy-tunnel run`` process in a namespace; stderr collected in ``lines``."""

    def __init__(
        self,
        topo: Topology,
        host: Host,
        args: list[str],
        backend: str | None = None,
        command: list[str] | None = None,
        cwd: str | None = None,
    ) -> None:
        """``command``: the CLI to start (default: this checkout's, ``python -m vxlanpy.cli``);
        ``cwd``: where to start it."""
        self.topo = topo
        self.host = host
        self.lines: list[str] = []
        env = dict(os.environ)
        if backend == "python":
            env["VXLANPY_PURE_PYTHON"] = "1"
            env.pop("VXLANPY_REQUIRE_C", None)
        elif backend == "cffi":
            env["VXLANPY_REQUIRE_C"] = "1"
            env.pop("VXLANPY_PURE_PYTHON", None)
        self.proc = host.popen(
            [*(command or [sys.executable, "-m", "vxlanpy.cli"]), "run", *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self.wait_line("listening on", 15):
            self.topo.stop(self.proc)
            raise AssertionError("vxlanpy did not start:\n" + "\n".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def wait_line(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            if self.proc.poll() is not None:
                self._reader.join(1)
                return any(text in line for line in self.lines)
            time.sleep(0.05)
        return False

    def stop(self) -> int:
        code = self.topo.stop(self.proc)
        self._reader.join(5)
        return code

    def stats(self) -> dict[str, object]:
        """The stats line printed at exit (call after stop())."""
        for line in reversed(self.lines):
            if ": stats " in line:
                return dict(json.loads(line.split(": stats ", 1)[1]))
        raise AssertionError("no stats line:\n" + "\n".join(self.lines))

    def events(self, kind: str) -> list[dict[str, object]]:
        out = []
        for line in self.lines:
            if line.startswith("vxlanpy-tunnel: {") and f"'event': '{kind}'" in line:
                out.append(eval(line.split(": ", 1)[1], {}))  # repr of a plain dict
        return out


def ping(host: Host, dest: str, count: int = 5, extra: tuple[str, ...] = ()) -> str:
    """Ping and assert 0% loss; returns ping's output (for RTT figures)."""
    out = host.sh("ping", "-c", str(count), "-i", "0.2", "-W", "2", *extra, dest, check=False)
    assert " 0% packet loss" in out, out
    return out


def tcp_transfer(src: Host, dst: Host, dst_ip: str, nbytes: int, port: int = 5001) -> float:
    """Send ``nbytes`` from ``src`` to ``dst`` over TCP; assert SHA-256 equality; rate in bit/s."""
    bind = "::" if ":" in dst_ip else "0.0.0.0"
    rx = dst.popen([sys.executable, XFER, "recv", bind, str(port)], stdout=subprocess.PIPE)
    assert rx.stdout is not None
    assert rx.stdout.readline().strip() == b"ready"
    sent = json.loads(src.sh(sys.executable, XFER, "send", dst_ip, str(port), str(nbytes), "7"))
    out, _ = rx.communicate(timeout=60)
    got = json.loads(out)
    assert got["bytes"] == nbytes, (got, sent)
    assert got["sha256"] == sent["sha256"]
    return nbytes * 8 / sent["seconds"]


@contextmanager
def capture(topo: Topology, host: Host, dev: str, path: Path, *bpf: str) -> Iterator[None]:
    """tcpdump on ``dev`` of ``host`` into ``path`` while the block runs (stopped by PID)."""
    log = path.with_suffix(".log")
    with open(log, "wb") as errf:
        dump = host.popen(
            ["tcpdump", "-i", dev, "-n", "--immediate-mode", "-U", "-w", str(path), *bpf],
            stdout=errf,
            stderr=errf,
        )
    try:
        assert wait_for(lambda: b"listening on" in log.read_bytes() or dump.poll() is not None, 10)
        assert dump.poll() is None, log.read_text()
        yield
        time.sleep(0.5)  # the last packets reach the file (-U: one write each)
    finally:
        topo.stop(dump)
