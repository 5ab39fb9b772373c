"""CI smoke run: ``benchmarks/micro.py --quick`` exits 0 and prints every row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vxlanpy import kernels

MICRO = Path(__file__).resolve().parent.parent / "benchmarks" / "micro.py"

SINGLE_ROWS = [
    "pack struct.pack_into",
    "pack wire.encode_header",
    "pack wire.encapsulate",
    "parse wire.decode_header",
    "parse wire.decapsulate",
    "engine handle_frame fdb-hit (single)",
    "fdb learn new entry",
    "fdb bytes/entry (tracemalloc)",
    "fdb bytes/entry (RSS delta)",
]
PER_BACKEND_ROWS = [
    "pack encap_batch x64",
    "parse decap_batch x64",
    "engine handle_frames fdb-hit x64",
    "engine handle_frames flood x2 x64",
    "engine handle_datagrams learn x64",
]


def _cffi_built() -> bool:
    try:
        kernels.load("cffi")
    except ImportError:
        return False
    return True


def test_micro_quick_runs() -> None:
    proc = subprocess.run(
        [sys.executable, str(MICRO), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "command:" in out and "machine:" in out and "python:" in out
    lines = out.splitlines()
    for row in SINGLE_ROWS:
        assert any(line.startswith(row) for line in lines), row
    backends = ["python"] + (["cffi"] * _cffi_built())
    for row in PER_BACKEND_ROWS:
        for name in backends:
            assert any(line.startswith(row) and line.split()[-3] == name for line in lines), (
                row,
                name,
            )
    assert "FDB at 10,000 learned entries" in out
