"""The bench's steal-time reading: /proc/stat's eighth field over the sum of the first eight."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import e2e


def test_cpu_times_reads_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 0 50 800 10 0 20 20 5 0\ncpu0 1 2 3\n")
    assert e2e.cpu_times(str(stat)) == (20, 1000)  # guest time is inside user's: not added


def test_cpu_times_unreadable(tmp_path: Path) -> None:
    assert e2e.cpu_times(str(tmp_path / "missing")) == (0, 0)
    bad = tmp_path / "bad"
    bad.write_text("cpu  1 x 2\n")
    assert e2e.cpu_times(str(bad)) == (0, 0)


def test_steal_pct() -> None:
    assert e2e.steal_pct((20, 1000), (70, 2000)) == pytest.approx(5.0)
    assert e2e.steal_pct((20, 1000), (20, 1000)) is None  # no time passed: no share


def test_cpu_times_on_this_host() -> None:
    steal, total = e2e.cpu_times()
    assert total > 0 and 0 <= steal <= total
