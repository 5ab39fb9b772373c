"""The docs runner itself: it must catch a wrong sample line and a failing command (naming the
file and line), keep shell state across a section, wait for a background job's start-up output,
and report what a section leaves behind, which it then removes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mdrun import match, needs_root, parse, run_section


def _root() -> None:
    if why := needs_root():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)


def _doc(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "doc.md"
    p.write_text(text)
    return p


BROKEN = """# A doc with two mistakes

## The section

Setup:

```
# x=hello
# echo $x; echo world
hello
world
```

A wrong sample line (line 18) and a failing command (line 19):

```
# echo $x
goodbye
# ls /nonexistent-vxd-dir
# echo after
after
```
"""


def test_wrong_sample_line_and_failing_command_are_reported(tmp_path: Path) -> None:
    _root()
    doc = _doc(tmp_path, BROKEN)
    [section] = parse(doc)
    fails = run_section(section)
    got = sorted((f.path, f.line) for f in fails)
    assert got == [(doc, 18), (doc, 19)], [str(f) for f in fails]
    text = {f.line: str(f) for f in fails}
    assert text[18].startswith(f"{doc}:18: output differs")
    assert "-goodbye" in text[18] and "+hello" in text[18]
    assert text[19].startswith(f"{doc}:19: exit status 2: ls /nonexistent-vxd-dir")
    assert "No such file or directory" in text[19]


def test_a_correct_doc_passes_and_state_carries_over(tmp_path: Path) -> None:
    _root()
    doc = _doc(
        tmp_path,
        """## s

```
# cd /tmp && v=42
# echo "$v in $PWD"; command -v vxlanpy-tunnel | grep -c /
42 in /tmp
1
# sleep 0.3 && echo started &
started
# echo seen 17 ms 02:00:00:00:00:01
~word ~3 ms ~aa:bb:cc:dd:ee:ff
# printf 'a\\nb\\nc\\n'
a
[...]
# cat > f.txt << 'EOF'
> one
>
> three
> EOF
# wc -l < f.txt; false; echo "exit $?"
3
exit 1
```
""",
    )
    [section] = parse(doc)
    assert [s.line for s in section.steps] == [4, 5, 8, 10, 12, 15, 20]
    assert run_section(section) == []


def test_leftovers_are_reported_and_removed(tmp_path: Path) -> None:
    """Namespaces exist only in the section's own mount namespace: one named like the docs'
    is not visible outside, and what the section left is reported."""
    _root()
    doc = _doc(
        tmp_path,
        """## s

```
# ip netns add vxd-mdrun-left
# touch /run/flannel/vxd-mdrun-left.env /run/vxlanpy/vxd-mdrun-left.sock
# sleep 600 &
```
""",
    )
    [section] = parse(doc)
    fails = run_section(section)
    assert len(fails) == 2, fails
    assert "background jobs still running" in str(fails[0]) and "sleep 600" in str(fails[0])
    assert "namespaces not deleted: vxd-mdrun-left" in str(fails[1])
    assert not os.path.exists("/run/netns/vxd-mdrun-left")
    assert not os.path.exists("/run/flannel/vxd-mdrun-left.env")
    assert not os.path.exists("/run/vxlanpy/vxd-mdrun-left.sock")


def test_python_blocks(tmp_path: Path) -> None:
    doc = _doc(
        tmp_path,
        """## p

```python
print(6 * 7)
print("x")
```

```
42
y
```

```python
raise SystemExit("bad")
```
""",
    )
    [section] = parse(doc)
    fails = run_section(section)
    assert [(f.line, f.message.split(":")[0]) for f in fails] == [
        (9, "output differs"),
        (14, "python block exited 1"),
    ]


def test_other_fences_are_text(tmp_path: Path) -> None:
    """Only plain blocks of ``# `` commands and ``python`` blocks run; ``python no-run``, other
    languages and plain blocks that do not start with a command are shown, not run."""
    doc = _doc(
        tmp_path,
        """## t

```python no-run
raise SystemExit("not run")
```

```toml
# a comment, not a command
key = 1
```

```
vxlanpy-tunnel: error: a message shown, not run
# not a command either: the block does not start with one
```

```
# echo run
run
```
""",
    )
    [section] = parse(doc)
    assert [(s.kind, s.line, s.code) for s in section.steps] == [("sh", 18, "echo run")]


def test_match_wildcards() -> None:
    assert match(["rx ~14 packets", "[...]", "end"], ["rx 9 packets", "x", "y", "end"])
    assert match(["a  b "], ["a b"])  # runs of spaces, trailing spaces
    assert match(["x [...] z"], ["x anything at all z"])
    assert match(["[...]"], [])
    assert not match(["rx ~14 packets"], ["rx  packets"])
    assert not match(["a"], ["a", "b"])
    assert not match(["~1 s"], ["1 2 s"])
