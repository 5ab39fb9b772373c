"""docs/flannel.md's reference against the program, for what can be checked without etcd: the
synopsis and the flag table against the ``flannel`` subcommand's parser (both ways), the flags
that still apply with ``--config``, the table's defaults against ``AgentConfig``'s, the config
file's keys and example against the loader, and the names of the Python API (its example is
not run by the docs runner: it needs etcd and a node; here it is executed up to ``main``)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest
from mdrun import REPO

from vxlanpy.cli import build_parser
from vxlanpy.cli import flannel as cli_flannel
from vxlanpy.config import ConfigError
from vxlanpy.flannel import config as flannel_config
from vxlanpy.flannel.config import AgentConfig, load_agent_config

DOC = (REPO / "docs" / "flannel.md").read_text()
FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*|-[a-z])\b")


def _section(title: str) -> str:
    m = re.search(rf"^### {re.escape(title)}\n(.*?)(?=^##+ |\Z)", DOC, re.M | re.S)
    assert m, f"no section ### {title} in docs/flannel.md"
    return m.group(1)


def _blocks(text: str, info: str = "") -> list[str]:
    return re.findall(rf"^```{re.escape(info)}\n(.*?)^```$", text, re.M | re.S)


def _rows(text: str) -> list[list[str]]:
    """The cells of each table row (header and rule skipped)."""
    rows = [r for r in text.splitlines() if r.startswith("| ")][1:]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows if set(r) > set("|- ")]


def _parser() -> argparse.ArgumentParser:
    sub = build_parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
    parser = sub.choices["flannel"]  # type: ignore[index]
    assert isinstance(parser, argparse.ArgumentParser)
    return parser


def _help_flags() -> set[str]:
    return {s for a in _parser()._actions for s in a.option_strings} - {"-h", "--help"}


def _dest(flag: str) -> str:
    return next(a.dest for a in _parser()._actions if flag in a.option_strings)


def _dests(flags: set[str]) -> set[str]:
    """The options ``flags`` name (``-v`` and ``--verbose`` are one)."""
    unknown = flags - _help_flags()
    assert not unknown, f"not options of flannel: {unknown}"
    return {_dest(f) for f in flags}


def test_synopsis_matches_the_parser() -> None:
    block = _blocks(_section("vxlanpy-tunnel flannel"))[0]
    lines = block.replace("\n  ", " ").split("\nvxlanpy-tunnel ")
    flags, with_config = (set(FLAG.findall(x)) for x in lines)
    assert _dests(flags | with_config) == _dests(_help_flags())
    # the second form: --config and the flags it does not replace (cli.flannel._FLAGS)
    replaced = {flag for flag, _dest, _default in cli_flannel._FLAGS}
    assert _dests(with_config) == _dests(_help_flags() - replaced)


def test_flag_table_matches_the_parser_and_the_defaults() -> None:
    rows = _rows(_section("vxlanpy-tunnel flannel"))
    table = [f for row in rows for f in FLAG.findall(row[0])]
    assert sorted(table) == sorted(set(table)), "a flag documented twice"
    assert set(table) == _help_flags()  # every option string, both ways
    defaults = {f.name: f.default for f in fields(AgentConfig)}
    defaults["etcd_endpoints"] = cli_flannel.DEFAULT_ENDPOINTS
    checked = 0
    for row in rows:
        dest = _dest(FLAG.findall(row[0])[0])
        shown = row[1].strip("`")
        if dest not in defaults or defaults[dest] is None or not row[1]:
            continue  # no default, or one the doc describes in words (the route's interface)
        want = defaults[dest]
        if isinstance(want, bool):
            assert shown == ("on" if want else "off"), (row[0], shown, want)
        elif isinstance(want, int | float):
            assert float(shown) == want, (row[0], shown, want)
        else:
            assert shown == want, (row[0], shown, want)
        checked += 1
    assert checked >= 7, checked


def _config_text() -> str:
    return _section("Config file")


def _keys_in(sentence_start: str) -> set[str]:
    """The backticked names in the config section's sentence about one table."""
    text = " ".join(_config_text().split())
    m = re.search(rf"`\[{sentence_start}\]` takes (.*?)(?:;|\. )", text)
    assert m, f"no sentence on [{sentence_start}]"
    return set(re.findall(r"`([a-z][a-z_]*)`", m.group(1)))


def test_config_keys_match_the_loader() -> None:
    replaced = {dest for _flag, dest, _default in cli_flannel._FLAGS}
    assert replaced | _keys_in("flannel") == set(flannel_config._FLANNEL_KEYS)
    assert _keys_in("vtep") == set(flannel_config._VTEP_KEYS)


def test_config_example_loads_and_a_wrong_key_is_named(tmp_path: Path) -> None:
    [example] = _blocks(_config_text(), "toml")
    good = tmp_path / "node.toml"
    good.write_text(example)
    cfg = load_agent_config(str(good))
    assert cfg.backend == "vxlanpy" and len(cfg.etcd_endpoints) == 3 and cfg.vtep is not None
    bad = tmp_path / "bad.toml"
    bad.write_text(example.replace("backend =", "bakend ="))
    with pytest.raises(ConfigError) as err:
        load_agent_config(str(bad))
    shown = re.search(r"\(`(node\.toml: \[flannel\]: unknown key [^`]*?) \(known", _config_text())
    assert shown, "the config section shows no unknown-key message"
    assert str(err.value).startswith(shown.group(1).replace("node.toml", str(bad))), err.value
    # a [vtep] value out of range is named with the file when it is read, not at start
    for key, value, needle in (
        ("tap_queue", "8", "tap_queue must be 16..16384 frames, got 8"),
        ("adaptive_poll", "100001", "adaptive_poll must be 0..100000 microseconds, got 100001"),
    ):
        text = re.sub(
            r"^\[vtep\][^\n]*\n", rf"\g<0>{key} = {value}\n", example, count=1, flags=re.M
        )
        assert f"\n{key} = {value}\n" in text
        bad.write_text(text)
        with pytest.raises(ConfigError, match=f"^{re.escape(str(bad))}: {needle}$"):
            load_agent_config(str(bad))


def _resolve(ref: str, mods: list[Any]) -> bool:
    """Whether a dotted name from the API table exists: in one of ``mods``, or as a module."""
    parts = ref.split(".")
    if any(_chain(base, parts) for base in mods):
        return True
    for prefix in ("vxlanpy.flannel.", ""):
        for k in range(len(parts), 0, -1):
            try:
                mod = importlib.import_module(prefix + ".".join(parts[:k]))
            except ImportError:
                continue
            if _chain(mod, parts[k:]):
                return True
    return False


def _chain(obj: Any, attrs: list[str]) -> bool:
    for k, part in enumerate(attrs):
        if k == len(attrs) - 1 and is_dataclass(obj) and part in {f.name for f in fields(obj)}:
            return True  # a field without a default: not a class attribute
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def test_python_api_example_and_names() -> None:
    text = _section("Python API")
    [example] = _blocks(text, "python no-run")
    scope: dict[str, Any] = {}
    exec(compile(example, "docs/flannel.md (Python API)", "exec"), scope)  # imports, main
    assert asyncio.iscoroutinefunction(scope["main"])
    cfg = AgentConfig(etcd_endpoints=[("198.18.6.201", 2379)])
    agent = importlib.import_module("vxlanpy.flannel").FlannelAgent(cfg)
    missing = []
    for name, what in _rows(text):
        module = name.strip("`").split("(")[0]
        if module.startswith("vxlanpy."):
            mods = [importlib.import_module(module)]
        else:
            flannel = importlib.import_module("vxlanpy.flannel")
            assert _resolve(module, [flannel]), module
            mods = [importlib.import_module(getattr(flannel, module).__module__), flannel]
        # the row's classes (and the agent, whose attributes are set in __init__): their
        # methods and fields are named in the row without the class
        mods += [v for v in vars(mods[0]).values() if isinstance(v, type)] + [agent, cfg]
        for ref in re.findall(r"`([A-Za-z_][\w.]*)", what):
            if ref != "python" and not _resolve(ref, mods):
                missing.append(f"{module}: {ref}")
    assert not missing, missing
