"""Each fuzz target (fuzz/targets.py) runs briefly: a few thousand inputs from the seed corpus
and their mutations, bounded in time; any crash, exception or sanitizer report fails the test.
``make fuzz`` runs them long."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNS = int(os.environ.get("FUZZ_CI_RUNS", "3000"))
TARGETS = ["config", "control", "table", "rx-python", "rx-cffi", "rx-compare", "rx-datapath"]


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_briefly(target: str) -> None:
    pytest.importorskip("atheris")
    argv = [sys.executable, str(ROOT / "fuzz" / "run.py"), target, f"-runs={RUNS}"]
    argv += ["-max_total_time=20", "-seed=1", "-print_final_stats=1"]
    env = {k: v for k, v in os.environ.items() if k != "VXLANPY_FUZZ_EXT"}
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    tail = "\n".join(p.stderr.splitlines()[-40:])
    assert p.returncode == 0, tail
    assert "stat::number_of_executed_units" in p.stderr, tail
    runs = int(p.stderr.split("stat::number_of_executed_units:")[1].split()[0])
    assert runs >= min(RUNS, 500), tail  # time-bounded on a slow machine, but it ran
