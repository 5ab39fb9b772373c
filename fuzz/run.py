"""Run one fuzz target: ``python fuzz/run.py TARGET [libFuzzer flags]``.

The seed corpus ``fuzz/corpus/TARGET`` (and the dictionary in ``fuzz/dict/``) is read, never
written: new inputs go to ``build/fuzz/corpus/TARGET`` and crashes to ``build/fuzz/artifacts/``
(both made here). With
``VXLANPY_FUZZ_EXT=DIR`` the C backend is the extension built with sanitizers in DIR
(``fuzz/build_asan.py``; run python with the ASan runtime preloaded, as ``make fuzz`` does).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _use_sanitizer_build(ext: str) -> None:
    """Make ``vxlanpy._native`` the copy in ``ext``, before anything imports it, without
    importing vxlanpy itself (targets.py must import it under atheris' instrumentation)."""
    found = sorted(Path(ext, "vxlanpy").glob("_native.*.so"))
    if not found:
        raise SystemExit(f"no sanitizer build in {ext} (run fuzz/build_asan.py)")
    spec = importlib.util.spec_from_file_location("vxlanpy._native", found[0])
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules["vxlanpy._native"] = mod
    print(f"fuzz: C backend from {mod.__file__}", file=sys.stderr)


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: run.py TARGET [libFuzzer flags]")
    name, flags = sys.argv[1], sys.argv[2:]
    ext = os.environ.get("VXLANPY_FUZZ_EXT")
    if ext:
        _use_sanitizer_build(ext)
    sys.path.insert(0, str(Path(__file__).parent))
    import atheris
    from targets import TARGETS

    if ext:  # the engine's C backend is the sanitizer build
        from vxlanpy import kernels

        assert kernels.load("cffi")._lib is sys.modules["vxlanpy._native"].lib

    if name not in TARGETS:
        raise SystemExit(f"unknown target {name!r} (have {', '.join(TARGETS)})")
    work = ROOT / "build" / "fuzz" / "corpus" / name
    artifacts = ROOT / "build" / "fuzz" / "artifacts" / name
    work.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    seeds = ROOT / "fuzz" / "corpus" / name
    argv = [sys.argv[0], f"-artifact_prefix={artifacts}/"]
    words = ROOT / "fuzz" / "dict" / f"{name.split('-')[0]}.dict"
    if words.exists():
        argv.append(f"-dict={words}")
    argv += [*flags, str(work), str(seeds)]
    atheris.Setup(argv, TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
