"""docs/reference.md against the program, for what can be checked mechanically: the flags of
every subcommand (``--help``) against the synopsis and the ``run`` flag table, both ways; the
flags that apply with ``run --config``; the keys of a running VTEP's ``stats --json`` against
the stats and counter tables; drop reasons, events and config-file keys against their single
source in the code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import fields
from functools import cache
from typing import Any

import pytest
from mdrun import REPO

from vxlanpy import DropReason
from vxlanpy.cli import build_parser
from vxlanpy.cli import run as cli_run
from vxlanpy.config import _SEGMENT_KEYS, _VTEP_KEYS
from vxlanpy.events import _NAMES
from vxlanpy.netns import Topology, have_netns
from vxlanpy.render import stats_text

REFERENCE = (REPO / "docs" / "reference.md").read_text()
TUTORIAL = (REPO / "docs" / "tutorial.md").read_text()
FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*|-[a-z])\b")


@cache
def _cli(*args: str, ns: str | None = None) -> str:
    argv = [sys.executable, "-m", "vxlanpy.cli", *args]
    if ns:
        argv = ["ip", "netns", "exec", ns, *argv]
    env = dict(os.environ, COLUMNS="200")  # one line per option in --help
    p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _subcommands() -> list[str]:
    usage = _cli("--help").splitlines()[0]
    m = re.search(r"\{([\w,]+)\}", usage)
    assert m, usage
    return m.group(1).split(",")


def _help_flags(sub: str) -> set[str]:
    """Option strings of ``vxlanpy-tunnel SUB --help`` (without -h/--help)."""
    out: set[str] = set()
    for line in _cli(sub, "--help").splitlines():
        if line.startswith("  -"):
            invocation = re.split(r"\s{2,}", line.strip())[0]
            out.update(FLAG.findall(invocation))
    return out - {"-h", "--help"}


def _section(text: str, title: str, level: str = "##") -> str:
    m = re.search(rf"^{level} {re.escape(title)}\n(.*?)(?=^{level} |\Z)", text, re.M | re.S)
    assert m, f"no section {level} {title}"
    return m.group(1)


def _first_column(text: str) -> list[str]:
    """The backticked names in the first cell of each table row (header and rule skipped)."""
    rows = [r for r in text.splitlines() if r.startswith("| ")]
    names = []
    for row in rows[1:]:
        if set(row) <= set("|- "):
            continue
        names.extend(re.findall(r"`([^`]+)`", row.split("|")[1]))
    return names


def _unique(names: list[str]) -> set[str]:
    dup = {x for x in names if names.count(x) > 1}
    assert not dup, f"documented twice: {dup}"
    return set(names)


def _synopsis() -> dict[str, set[str]]:
    block = re.search(r"```\n(.*?)```", _section(REFERENCE, "Synopsis"), re.S)
    assert block
    out: dict[str, set[str]] = {}
    for line in block.group(1).splitlines():
        words = line.split()
        out.setdefault(words[1], set()).update(FLAG.findall(line))
    return out


def _config_flags() -> set[str]:
    """The run flags that apply with --config, from the parser and cli.run's own list."""
    sub = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr,index]
    keep = cli_run._NOT_CONFIG
    return {s for a in sub._actions if a.dest in keep for s in a.option_strings}


def test_every_subcommand_has_a_synopsis_and_a_section() -> None:
    syn = _synopsis()
    for sub in _subcommands():
        assert sub in syn, f"Synopsis lacks vxlanpy-tunnel {sub}"
        if sub not in ("stats", "events"):
            _section(REFERENCE, sub)  # fdb, neigh, export, lab, run have sections
    assert set(syn) == set(_subcommands()), "Synopsis names a subcommand the CLI lacks"


@pytest.mark.parametrize("sub", [s for s in _subcommands() if s != "run"])
def test_synopsis_flags_match_help(sub: str) -> None:
    assert _synopsis()[sub] == _help_flags(sub)


def test_run_flag_table_matches_help() -> None:
    table = {f for cell in _first_column(_section(REFERENCE, "run")) for f in FLAG.findall(cell)}
    assert table == _help_flags("run")
    assert _synopsis()["run"] <= _help_flags("run")


def test_flags_that_apply_with_config() -> None:
    """Synopsis line ``run --config``, the sentence under the run table and the tutorial's."""
    want = _config_flags() - {"-h", "--help", "--verbose"}
    block = re.search(r"```\n(.*?)```", _section(REFERENCE, "Synopsis"), re.S)
    assert block
    line = next(
        x for x in block.group(1).splitlines() if x.startswith("vxlanpy-tunnel run --config")
    )
    assert set(FLAG.findall(line)) == want
    ref = re.search(r"With `--config`, (.*?) apply\.", REFERENCE, re.S)
    assert ref and set(FLAG.findall(ref.group(1))) | {"--config"} == want
    tut = re.search(r"Of the other flags, (.*?) apply;", TUTORIAL, re.S)
    assert tut and set(FLAG.findall(tut.group(1))) | {"--config"} == want


def test_control_default_paths_are_documented() -> None:
    text = " ".join(_cli("run", "--help").split())
    m = re.search(r"--control CONTROL (.*?) --vni", text)
    assert m, text
    paths = re.findall(r"/run/vxlanpy/[\w<>/.-]*\.sock", m.group(1))
    assert len(paths) == 2, m.group(1)
    table = _section(REFERENCE, "Control socket")
    for path in paths:
        assert f"`{path}`" in table, path


def test_drop_reasons_table_is_complete() -> None:
    assert _unique(_first_column(_section(REFERENCE, "Drop reasons"))) == {
        r.value for r in DropReason
    }


def test_events_table_is_complete() -> None:
    rows = [r for r in _section(REFERENCE, "Events").splitlines() if r.startswith("| `")]
    got = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        got[cells[0].strip("`")] = (cells[1].strip("`"), re.findall(r"`(\w+)`", cells[2]))
    want = {name: (cls.__name__, [f.name for f in fields(cls)]) for cls, name in _NAMES.items()}
    assert got == want


def test_config_file_tables_are_complete() -> None:
    text = _section(REFERENCE, "Config file")
    tables = re.split(r"^`\[\[segment\]\]`", text, flags=re.M)
    assert len(tables) == 2, "the [[segment]] table must follow the [vtep] one"
    assert _unique(_first_column(tables[0])) == set(_VTEP_KEYS)
    assert _unique(_first_column(tables[1])) == set(_SEGMENT_KEYS)


# --- counters of a running VTEP ------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_stats() -> dict[str, Any]:
    """``stats --json`` of a real ``vxlanpy-tunnel run`` in a namespace of its own."""
    if not have_netns():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI=true but this needs root to run a VTEP in a namespace")
        pytest.skip("needs root to run a VTEP in a namespace")
    with Topology() as t:
        h = t.add_host("ref")
        p = h.popen(
            [sys.executable, "-m", "vxlanpy.cli", "run", "--vni", "7", "--tap", "vxref"],
            stderr=subprocess.PIPE,
            cwd=REPO,
        )
        assert p.stderr is not None
        line = p.stderr.readline().decode()
        assert "listening on" in line, line
        deadline = time.monotonic() + 10
        while True:
            try:
                return dict(json.loads(_cli("stats", "--json", ns=h.ns)))
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def test_stats_keys_are_documented(live_stats: dict[str, Any]) -> None:
    assert _unique(_first_column(_section(REFERENCE, "stats"))) == set(live_stats)
    gro_row = next(r for r in _section(REFERENCE, "stats").splitlines() if r.startswith("| `gro`"))
    for key in live_stats["gro"]:
        assert f"`{key}`" in gro_row, key


def test_counters_are_documented(live_stats: dict[str, Any]) -> None:
    seg = live_stats["segments"]["7"]
    assert list(seg) == list(live_stats["unattributed"])
    assert _unique(_first_column(_section(REFERENCE, "Counters"))) == set(seg)


def test_text_form_omissions(live_stats: dict[str, Any]) -> None:
    """The keys that ``stats`` (text) leaves out are the ones the reference lists."""
    n = iter(range(900001, 999999))

    def mark(v: Any) -> Any:  # every number unique, every empty table filled, so a change shows
        if isinstance(v, bool):
            return v
        if isinstance(v, int):
            return next(n)
        if isinstance(v, dict):
            return {k: mark(x) for k, x in v.items()} if v else {"x": next(n)}
        return v

    # a peer's ICMP errors, as a VTEP whose remote's port was closed would have them
    icmp = {"198.18.0.9": {"unreachable": 1, "last": {"type": 3, "code": 3, "from": "x"}}}
    # and a peer's counters, as a VTEP that exchanged traffic has them
    peer = {"198.18.0.9": dict.fromkeys(("tx_packets", "tx_bytes", "rx_packets", "rx_bytes"), 1)}
    st = mark({**live_stats, "icmp": live_stats["icmp"] or icmp, "peers": peer})
    full = stats_text(st)
    shown = set()
    for key in st:
        try:
            if stats_text({k: v for k, v in st.items() if k != key}) != full:
                shown.add(key)
        except KeyError:
            shown.add(key)
    m = re.search(r"the text form omits (.*?)\.", _section(REFERENCE, "stats"), re.S)
    assert m
    assert set(re.findall(r"`(\w+)`", m.group(1))) == set(st) - shown
