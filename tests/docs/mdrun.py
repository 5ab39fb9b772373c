"""Run the command blocks of a markdown document and compare their output with the document.

A document is cut into sections at its level-2 headings (``##``; deeper headings stay in their
section). Each section runs on its own, in order, block by block:

- A fenced block whose first line starts with ``# `` is a terminal session: every ``# CMD`` line
  (with its ``> `` continuation lines) is a command, the lines under it up to the next command are
  its output. All commands of a section run in one ``bash``, as typed into a root terminal, from
  the top of the checkout, with the venv's ``bin`` first on ``PATH``.
- A ```` ```python ```` block is run by the venv's Python; a plain fenced block right after it is
  what it prints (no such block: it must print nothing).
- Any other fenced block is text, not run: one with another info string (```` ```toml ````,
  ```` ```python no-run ```` for an example that needs what a section cannot give it), and a
  plain one whose first line is not a ``# `` command (a log excerpt, an error message).

Output matching (``match``): runs of spaces count as one and trailing spaces are ignored;
``~`` before a value (a number, a MAC, a time, a word) matches any value there; ``[...]`` on a
line of its own matches any number of lines (also none), inside a line any text. A command that
exits non-zero fails, as does output that does not match. A command ending in ``&`` runs in the
background; what it prints when it starts is shown under it, and the runner waits for it (up to
``WAIT`` seconds), as a reader waits for the start-up line before typing on. Later output of a
background job must go to a file, or appear under the command that ends the job
(``kill %1; wait %1``).

Isolation: each section's shell runs under ``unshare --mount --pid --fork`` with its own
``/run/netns``, ``/run/vxlanpy``, ``/run/flannel`` and ``/tmp`` (tmpfs). The namespaces a
section creates by their documented names (``vxd-a``, ...) exist only for that shell, so they
cannot collide with another run or with what a crashed run left; when the shell ends, the
kernel ends every process it started and the namespaces go with its mounts. A section must clean
up after itself (namespaces deleted, background jobs stopped): what it leaves is reported, then
removed (jobs ended by PID).
"""

from __future__ import annotations

import difflib
import os
import re
import secrets
import select
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from markdown_it import MarkdownIt

__all__ = ["Step", "Section", "Failure", "parse", "match", "run_section", "needs_root", "WAIT"]

PROMPT = "# "
MORE = "> "
WAIT = 30.0  # seconds to wait for a background job's start-up output
TIMEOUT = 120.0  # seconds a single command may run
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Step:
    """One command (``kind`` ``sh``) or Python block (``python``) and the output shown for it."""

    kind: str
    line: int  # 1-based line of the command (or of the block's first code line) in the file
    code: str
    expected: list[str]
    out_line: int  # 1-based line of the first expected output line

    @property
    def background(self) -> bool:
        return self.kind == "sh" and self.code.rstrip().endswith("&") and "\n" not in self.code


@dataclass
class Section:
    path: Path
    title: str
    line: int
    steps: list[Step] = field(default_factory=list)

    @property
    def needs_shell(self) -> bool:
        return any(s.kind == "sh" for s in self.steps)


@dataclass
class Failure:
    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


# --- parsing -------------------------------------------------------------------------------------


def _terminal_steps(lines: list[str], first: int) -> Iterator[Step]:
    """The commands of a terminal block; ``first`` is the file line of ``lines[0]``."""
    i = 0
    while i < len(lines):
        line_no = first + i
        code = [lines[i][len(PROMPT) :]]
        i += 1
        while i < len(lines) and (lines[i].startswith(MORE) or lines[i] == MORE.strip()):
            code.append(lines[i][len(MORE) :])
            i += 1
        out_line = first + i
        expected = []
        while i < len(lines) and not lines[i].startswith(PROMPT):
            expected.append(lines[i])
            i += 1
        yield Step("sh", line_no, "\n".join(code), expected, out_line)


def parse(path: Path) -> list[Section]:
    """The sections of a markdown file and the steps of each."""
    text = path.read_text()
    tokens = MarkdownIt("commonmark").parse(text)
    sections = [Section(path, "(top)", 1)]
    for k, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.tag == "h2" and tok.map:
            sections.append(Section(path, tokens[k + 1].content, tok.map[0] + 1))
        if tok.type != "fence" or not tok.map:
            continue
        lines = tok.content.splitlines()
        first = tok.map[0] + 2  # the line after the opening fence, 1-based
        info = tok.info.strip()
        if not info and lines and lines[0].startswith(PROMPT):
            sections[-1].steps.extend(_terminal_steps(lines, first))
        elif info == "python":
            nxt = tokens[k + 1] if k + 1 < len(tokens) else None
            expected: list[str] = []
            out_line = first + len(lines) + 1
            if nxt is not None and nxt.type == "fence" and not nxt.info.strip() and nxt.map:
                if not nxt.content.startswith(PROMPT):
                    expected = nxt.content.splitlines()
                    out_line = nxt.map[0] + 2
            sections[-1].steps.append(Step("python", first, tok.content, expected, out_line))
    return [s for s in sections if s.steps]


# --- matching ------------------------------------------------------------------------------------

_WILD = re.compile(r"\[\.\.\.\]|~[\w.:-]+")
_SPACES = re.compile(r"[ \t]+")


def _norm(line: str) -> str:
    return _SPACES.sub(" ", line).rstrip()


def _line_regex(expected: str) -> re.Pattern[str]:
    parts = []
    pos = 0
    for m in _WILD.finditer(expected):
        parts.append(re.escape(expected[pos : m.start()]))
        parts.append(".*" if m.group() == "[...]" else r"[\w.:-]+")
        pos = m.end()
    parts.append(re.escape(expected[pos:]))
    return re.compile("".join(parts))


def match(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` lines are what ``expected`` shows, wildcards included."""
    exp = [_norm(e) for e in expected]
    act = [_norm(a) for a in actual]
    regexes = [None if e == "[...]" else _line_regex(e) for e in exp]
    memo: dict[tuple[int, int], bool] = {}

    def go(i: int, j: int) -> bool:
        if (i, j) in memo:
            return memo[(i, j)]
        if i == len(exp):
            ok = j == len(act)
        elif regexes[i] is None:  # any number of lines
            ok = go(i + 1, j) or (j < len(act) and go(i, j + 1))
        else:
            rx = regexes[i]
            ok = j < len(act) and rx is not None and bool(rx.fullmatch(act[j])) and go(i + 1, j + 1)
        memo[(i, j)] = ok
        return ok

    return go(0, 0)


def _aligned(expected: list[str], actual: list[str]) -> list[str]:
    """``actual`` with each line that an expected line matches written as that expected line
    (and lines a ``[...]`` takes as one ``[...]``), so that a diff shows only real differences."""
    rx = [None if _norm(e) == "[...]" else _line_regex(_norm(e)) for e in expected]
    out: list[str] = []
    i = 0
    for line in actual:
        a = _norm(line)
        if i < len(rx) and rx[i] is None:  # in a gap: does this line start what follows it?
            nxt = rx[i + 1] if i + 1 < len(rx) else None
            if not out or out[-1] != expected[i]:
                out.append(expected[i])
            if nxt is not None and nxt.fullmatch(a):
                out.append(expected[i + 1])
                i += 2
            continue
        cur = rx[i] if i < len(rx) else None
        if cur is not None and cur.fullmatch(a):
            out.append(expected[i])
            i += 1
        else:
            out.append(line)
    if i < len(rx) and rx[i] is None and (not out or out[-1] != expected[i]):
        out.append(expected[i])
    return out


def _diff(step: Step, actual: list[str]) -> str:
    return "\n".join(
        difflib.unified_diff(
            step.expected,
            _aligned(step.expected, actual),
            f"shown (from line {step.out_line})",
            "actual",
            lineterm="",
            n=2,
        )
    )


# --- running -------------------------------------------------------------------------------------


def needs_root() -> str | None:
    """Why terminal sections cannot run here, or None."""
    if os.geteuid() != 0:
        return "terminal sections run as root (namespaces, TAPs)"
    for tool in ("unshare", "ip", "bash"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    scripts = sysconfig.get_path("scripts")  # the venv's bin: vxlanpy-tunnel, python
    env["PATH"] = scripts + os.pathsep + env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env["VIRTUAL_ENV"] = sys.prefix
    env.pop("PYTHONPATH", None)
    for var in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES"):  # as in a fresh terminal,
        env.pop(var, None)  # not inside the `make test` that runs the tests
    env["LC_ALL"] = "C.UTF-8"
    env["TERM"] = "dumb"
    return env


def _under_tmp(paths: list[str]) -> list[str]:
    """Those of ``paths`` under /tmp, none inside another."""
    found = sorted({os.path.realpath(p) for p in paths if os.path.realpath(p).startswith("/tmp/")})
    return [p for p in found if not any(p.startswith(q + "/") for q in found if q != p)]


class Shell:
    """A bash in private mount and PID namespaces; commands in, output and status out."""

    def __init__(self) -> None:
        self.mark = "__mdrun_" + secrets.token_hex(6)
        rfd, self._wfd = os.pipe()
        # the checkout and the venv stay visible when they live under /tmp (a CI clone may):
        # held on a private tmpfs at /mnt while /tmp is covered, then moved back in place
        keep = _under_tmp([str(REPO), sys.prefix])
        hold = "".join(
            f"mkdir /mnt/{k} && mount --bind {shlex.quote(p)} /mnt/{k}\n"
            for k, p in enumerate(keep)
        )
        back = "".join(
            f"mkdir -p {shlex.quote(p)} && mount --move /mnt/{k} {shlex.quote(p)}\n"
            for k, p in enumerate(keep)
        )
        preamble = (
            f"exec {rfd}<&-\n"
            + ("mkdir -p /mnt && mount -t tmpfs tmpfs /mnt\n" + hold if keep else "")
            + "for d in /run/netns:0755 /run/vxlanpy:0700 /run/flannel:0755 /tmp:1777; do"
            " mkdir -p -m ${d#*:} ${d%:*} && mount -t tmpfs -o mode=${d#*:} tmpfs ${d%:*}; done\n"
            + (back + "umount /mnt\n" if keep else "")
            + f"cd {shlex.quote(str(REPO))}\n"
        )
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"]
            + ["--propagation", "private", "bash", "--noprofile", "--norc", f"/dev/fd/{rfd}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=(rfd,),
            env=_env(),
            cwd=REPO,
        )
        os.close(rfd)
        assert self.proc.stdout is not None
        self._out = self.proc.stdout.fileno()
        self._buf = b""
        out, rc = self.run(preamble, 20)
        if rc != 0:
            self.close()
            raise RuntimeError(f"cannot set up the shell: {out}")

    def _read(self, deadline: float) -> bool:
        """Read what is available until ``deadline``; False on timeout or end of output."""
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([self._out], [], [], left)
        if not ready:
            return False
        chunk = os.read(self._out, 65536)
        if not chunk:
            return False
        self._buf += chunk
        return True

    def run(self, code: str, timeout: float) -> tuple[list[str], int | None]:
        """Run ``code``; its output lines and exit status (None: timed out or shell gone)."""
        script = f'{code}\nprintf "\\n%s %s\\n" {self.mark} "$?"\n'
        os.write(self._wfd, script.encode())
        deadline = time.monotonic() + timeout
        token = ("\n" + self.mark + " ").encode()
        while True:
            at = self._buf.find(token)
            end = self._buf.find(b"\n", at + len(token)) if at >= 0 else -1
            if end >= 0:
                out = self._buf[:at]
                rc = int(self._buf[at + len(token) : end])
                self._buf = self._buf[end + 1 :]
                return out.decode(errors="replace").splitlines(), rc
            if not self._read(deadline):
                out, self._buf = self._buf, b""
                return out.decode(errors="replace").splitlines(), None

    def more(self, lines: list[str], want: list[str], wait: float) -> list[str]:
        """Output of background jobs that arrives within ``wait`` s, until ``lines`` matches."""
        deadline = time.monotonic() + wait
        while not match(want, lines):
            got = self._buf.rfind(b"\n")
            if got >= 0:
                lines = lines + self._buf[:got].decode(errors="replace").splitlines()
                self._buf = self._buf[got + 1 :]
                continue
            if not self._read(deadline):
                break
        return lines

    def close(self) -> None:
        if self._wfd >= 0:
            os.close(self._wfd)  # bash reads the end of its script and exits
            self._wfd = -1
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # --kill-child: the shell and its PID namespace die with it
            self.proc.wait(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def _leftovers(sh: Shell) -> list[str]:
    """What the section left running or defined; ended by PID and deleted."""
    found = []
    jobs, _ = sh.run("jobs -p", 10)
    pids = [p for p in jobs if p.strip().isdigit()]
    ps, _ = sh.run(f"ps -o pid=,args= -p {','.join(pids)}", 10) if pids else ([], 0)
    if ps:
        found.append("background jobs still running: " + "; ".join(x.strip() for x in ps))
        sh.run(f"kill {' '.join(pids)} 2>/dev/null; sleep 0.5; kill -9 {' '.join(pids)}", 20)
        sh.run("wait", 20)
    names, _ = sh.run("ip netns list | cut -d' ' -f1", 10)
    if names:
        found.append("namespaces not deleted: " + ", ".join(names))
        sh.run("".join(f"ip netns del {n}; " for n in names), 30)
    return found


def _run_python(step: Step, path: Path) -> tuple[list[str], int | None, str]:
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / f"{path.name}.py"
        src.write_text("\n" * (step.line - 1) + step.code)  # tracebacks give the file's lines
        try:
            p = subprocess.run(
                [sys.executable, str(src)],
                capture_output=True,
                text=True,
                cwd=REPO,
                env=_env(),
                timeout=TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            return [], None, ""
    return p.stdout.splitlines(), p.returncode, p.stderr


def _check(step: Step, sh: Shell | None, path: Path) -> tuple[list[str], Failure | None]:
    """Run one step; its output and what went wrong (None: as shown)."""
    if step.kind == "python":
        out, rc, err = _run_python(step, path)
        if rc != 0:
            what = "timed out" if rc is None else f"exited {rc}"
            return out, Failure(path, step.line, f"python block {what}:\n{err}")
    else:
        assert sh is not None
        out, rc = sh.run(step.code, TIMEOUT)
        if rc is not None and not match(step.expected, out):
            out = sh.more(out, step.expected, WAIT if step.background else 2.0)
        if rc != 0:
            what = "timed out" if rc is None else f"exit status {rc}"
            return out, Failure(path, step.line, f"{what}: {step.code}\n" + "\n".join(out))
    if not match(step.expected, out):
        return out, Failure(path, step.out_line, "output differs:\n" + _diff(step, out))
    return out, None


def run_section(
    section: Section, seen: list[tuple[Step, list[str]]] | None = None
) -> list[Failure]:
    """Run every step of ``section``; what did not go as the document shows. ``seen`` gets
    each step and its actual output."""
    fails: list[Failure] = []
    sh = Shell() if section.needs_shell else None
    try:
        for step in section.steps:
            out, fail = _check(step, sh, section.path)
            if seen is not None:
                seen.append((step, out))
            if fail is not None:
                fails.append(fail)
                gone = sh is not None and sh.proc.poll() is not None
                if gone or fail.message.startswith("timed out"):
                    break  # the shell is gone or in an unknown state
        if sh is not None and sh.proc.poll() is None:
            left = _leftovers(sh)
            fails.extend(Failure(section.path, section.line, f"{section.title}: {x}") for x in left)
    finally:
        if sh is not None:
            sh.close()
    return fails


def main(argv: list[str]) -> int:
    """``python tests/docs/mdrun.py FILE.md [LINE ...]``: run the sections of FILE (those starting
    at the given heading lines) and print each command with its actual output, in the document's
    form (to paste where a sample is out of date), then the failures."""
    path = Path(argv[0]).resolve()
    wanted = {int(a) for a in argv[1:]}
    bad = 0
    for section in parse(path):
        if wanted and section.line not in wanted:
            continue
        seen: list[tuple[Step, list[str]]] = []
        fails = run_section(section, seen)
        print(f"## {section.title} (line {section.line})")
        for step, out in seen:
            if step.kind == "sh":
                first, *rest = step.code.split("\n")
                print(PROMPT + first, *(MORE + r for r in rest), sep="\n")
            else:
                print(f"[python block, line {step.line}]")
            print(*out, sep="\n") if out else None
        for f in fails:
            print(f"FAIL {f}", file=sys.stderr)
        bad += len(fails)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
