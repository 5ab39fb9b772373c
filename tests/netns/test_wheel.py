"""What ``pip install`` gives a user: an sdist and a wheel built from the checkout's files,
the wheel installed into a fresh venv outside the checkout, and that install used for real:
``vxlanpy-tunnel --help``, every subpackage imported with the C extension, and a
vxlanpy <-> kernel ping in namespaces run by the installed ``vxlanpy-tunnel``.

The build uses only what git knows of (tracked files, and new files not ignored), copied to a
temporary directory: what a fresh clone holds, not the editable install's generated files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Vxlanpy, ping

from vxlanpy.netns import Topology

REPO = Path(__file__).resolve().parents[2]
# every package of the source tree (a new subpackage left out of the wheel fails here)
SUBPACKAGES = tuple(
    sorted(
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "vxlanpy").rglob("__init__.py")
    )
)
CSRC = tuple(
    f"vxlanpy/{p.relative_to(REPO / 'vxlanpy')}" for p in (REPO / "vxlanpy/csrc").iterdir()
)


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> str:
    p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(argv)}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bin/ directory of a fresh venv with the wheel installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    files = _run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO
    ).split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():  # a tracked file deleted in the working tree is skipped
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((REPO / name).read_bytes())
    dist = tmp / "dist"
    _run([sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), str(src)], cwd=tmp)
    (sdist,) = dist.glob("vxlanpy-*.tar.gz")
    with tarfile.open(sdist) as t:
        names = t.getnames()
    for want in ("vxlanpy/io/udp.py", "vxlanpy/cli/__init__.py", "vxlanpy/py.typed", *CSRC):
        assert any(n.endswith(want) for n in names), (want, names)
    # the wheel is built from the sdist: what a user of `pip install vxlanpy` builds
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(sdist)],
        cwd=tmp,
    )
    (wheel,) = dist.glob("vxlanpy-*.whl")
    with zipfile.ZipFile(wheel) as z:
        inside = z.namelist()
    assert "vxlanpy/csrc/vx.h" in inside  # the pure-Python backend reads its constants there
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    _run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], cwd=tmp)
    yield env_dir / "bin"


def test_installed_wheel_imports_and_has_a_cli(installed: Path, tmp_path: Path) -> None:
    py = str(installed / "python")
    code = (
        "import importlib, vxlanpy; "
        f"[importlib.import_module(m) for m in {SUBPACKAGES!r}]; "
        "import vxlanpy.io.tap, vxlanpy.io.udp, vxlanpy.tunnel, vxlanpy.control; "
        "print(vxlanpy.BACKEND, vxlanpy.__file__)"
    )
    env = {**os.environ, "VXLANPY_REQUIRE_C": "1"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [py, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    backend, where = out.stdout.split()
    assert backend == "cffi"
    assert str(REPO) not in where  # the installed copy, not the checkout
    pure = {**env, "VXLANPY_PURE_PYTHON": "1"}
    pure.pop("VXLANPY_REQUIRE_C")
    out = subprocess.run(
        [py, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=pure, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "python"  # the twin, reading csrc/vx.h from the install
    helptext = _run([str(installed / "vxlanpy-tunnel"), "--help"], cwd=tmp_path)
    for command in ("run", "fdb", "neigh", "stats", "events", "export", "lab"):
        assert command in helptext


def test_installed_cli_pings_the_kernel(installed: Path, topo: Topology, tmp_path: Path) -> None:
    a, b = topo.add_host("a"), topo.add_host("b")
    dev = topo.link(a, b, "198.18.0.1/24", "198.18.0.2/24")
    topo.kernel_vxlan(b, vni=42, dev=dev, remote="198.18.0.1", address="198.19.0.2/24")
    v = Vxlanpy(
        topo,
        a,
        ["--vni", "42", "--local", "198.18.0.1", "--remote", "198.18.0.2", "--tap", "vx0"]
        + ["--address", "198.19.0.1/24"],
        backend="cffi",
        command=[str(installed / "vxlanpy-tunnel")],
        cwd=str(tmp_path),
    )
    assert "backend cffi" in v.lines[0]
    ping(a, "198.19.0.2")
    ping(b, "198.19.0.1")
    assert v.stop() == 0
    assert v.stats()["segments"]["42"]["rx_packets"] >= 5  # type: ignore[index]
