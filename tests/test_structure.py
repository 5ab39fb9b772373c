"""The shape the code keeps (issue: a fast path that is easy to see and to change): no source
file in vxlanpy/ over 600 lines, no import cycle between its modules, every C helper defined
once (a static function name appears in one C unit only), and the C API declared in one header
that cffi reads."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "vxlanpy"
MAX_LINES = 600


def _sources() -> list[Path]:
    return sorted(p for p in PKG.rglob("*") if p.suffix in (".py", ".c", ".h"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PKG)))
def test_no_file_over_600_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Modules of vxlanpy that ``path`` imports at module level (not under TYPE_CHECKING, not
    inside functions: those run later and cannot make a cycle at import time)."""
    tree = ast.parse(path.read_text())
    me = _module(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.startswith("vxlanpy"):
                for a in node.names:  # `from . import x` imports the submodule x
                    sub = PKG.parent / (base + "." + a.name).replace(".", "/")
                    if sub.with_suffix(".py").exists() or sub.is_dir():
                        out.add(f"{base}.{a.name}")
                    else:
                        out.add(base)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("vxlanpy")}
    out.discard(me)
    return out


def test_no_import_cycle() -> None:
    graph = {_module(p): _imports(p) for p in PKG.rglob("*.py")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if n not in graph:
                continue
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n) :] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_every_c_helper_is_defined_once() -> None:
    defined: dict[str, str] = {}
    for c in sorted((PKG / "csrc").glob("*.c")):
        for name in re.findall(r"^static (?:inline )?[\w\s\*]+?\b(\w+)\(", c.read_text(), re.M):
            assert name not in defined, f"{name} in {defined[name]} and {c.name}"
            defined[name] = c.name
    inline = set(
        re.findall(r"static inline [\w\s\*]+?\b(\w+)\(", (PKG / "csrc/vx_internal.h").read_text())
    )
    assert not inline & set(defined), "a helper of vx_internal.h defined again in a unit"


def test_the_api_is_declared_once() -> None:
    """Every function the C units export is declared in vx.h (cffi's cdef) or vx_internal.h."""
    declared = (PKG / "csrc/vx.h").read_text() + (PKG / "csrc/vx_internal.h").read_text()
    for c in sorted((PKG / "csrc").glob("*.c")):
        for name in re.findall(r"^(?!static)[a-z][\w\s\*]*?\b(vx_\w+)\(", c.read_text(), re.M):
            assert re.search(rf"\b{name}\(", declared), f"{name} ({c.name}) is not declared"


def test_test_files_have_unique_names() -> None:
    """pytest imports test files by their base name (rootdir mode): two with one name in
    different folders stop the whole run at collection."""
    names = [p.name for p in (Path(__file__).parent).rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
