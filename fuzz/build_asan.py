"""Build a copy of the C extension with AddressSanitizer and UndefinedBehaviorSanitizer into
``DIR/vxlanpy/`` (default ``build/fuzz/asan``), from the source list of
``vxlanpy/_build_native.py``. ``fuzz/run.py`` loads it when ``VXLANPY_FUZZ_EXT=DIR``.

    python fuzz/build_asan.py [DIR]
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from cffi import FFI

from vxlanpy import _build_native as b

ROOT = Path(__file__).resolve().parents[1]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


def build(out: Path) -> Path:
    tmp = out / "tmp"
    ffi = FFI()
    ffi.cdef(b.CDEF)
    ffi.set_source(
        "vxlanpy._native",
        '#include "vx.h"\n',
        include_dirs=[str(b.CSRC)],
        sources=[str(p) for p in b.SOURCES],
        extra_compile_args=["-O1", "-g", "-D_GNU_SOURCE", "-fno-omit-frame-pointer", *SANITIZE],
        # no sanitizer runtime linked: the one preloaded (atheris's asan_with_fuzzer.so, ASan
        # + UBSan + libFuzzer in one) provides it, so Python coverage reaches libFuzzer
    )
    so = Path(ffi.compile(tmpdir=str(tmp)))
    dest = out / "vxlanpy" / so.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(".part")
    shutil.copy2(so, part)
    os.replace(part, dest)  # a new file: a fuzzer running on the old one keeps it intact
    return dest


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "fuzz" / "asan"
    print(build(out.resolve()))
