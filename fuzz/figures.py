"""The figures of the last ``make fuzz`` as a Markdown table (for docs/reliability.md), from
``build/fuzz/logs/TARGET.log`` and ``build/fuzz/artifacts/TARGET/``: ``python fuzz/figures.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "build" / "fuzz"
TARGETS = ("config", "control", "table", "rx-python", "rx-cffi", "rx-compare", "rx-datapath")
_SANITIZER = re.compile(r"ERROR: AddressSanitizer|runtime error:|ERROR: UndefinedBehaviorSanitizer")


def _last(pattern: str, text: str) -> tuple[str, ...] | None:
    found = re.findall(pattern, text)
    if not found:
        return None
    last = found[-1]
    return last if isinstance(last, tuple) else (last,)


def row(target: str) -> str:
    log = ROOT / "logs" / f"{target}.log"
    if not log.exists():
        return f"| `{target}` | not run | | | | | | |"
    text = log.read_text(errors="replace")
    runs = _last(r"stat::number_of_executed_units: (\d+)", text)
    eps = _last(r"stat::average_exec_per_sec:\s+(\d+)", text)
    done = _last(r"Done (\d+) runs in (\d+) second", text)
    cov = _last(r"DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/", text)
    art = ROOT / "artifacts" / target
    crashes = len(list(art.iterdir())) if art.exists() else 0
    reports = len(_SANITIZER.findall(text))
    return (
        f"| `{target}` | {int(runs[0]) if runs else 0:,} | {done[1] if done else '-'} | "
        f"{int(eps[0]) if eps else 0:,} | {cov[0] + ' / ' + cov[1] if cov else '-'} | "
        f"{cov[2] if cov else '-'} | {crashes} | {reports} |"
    )


def main() -> None:
    print("| target | inputs | seconds | exec/s | coverage (edges / features) | corpus |", end="")
    print(" crashes | sanitizer reports |")
    print("|---|---|---|---|---|---|---|---|")
    for t in TARGETS:
        print(row(t))


if __name__ == "__main__":
    main()
