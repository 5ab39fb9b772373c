"""cffi out-of-line API build of vxlanpy's C fast path -> ``vxlanpy._native``: the units in
``csrc/`` (one concern each), declared in ``csrc/vx.h``, sharing ``csrc/vx_internal.h``.

Run by setuptools through ``cffi_modules`` (see setup.py); never imported at run time. The
fuzzing build (``make fuzz``) imports ``SOURCES`` and ``HEADER`` to build a sanitized copy.
"""

from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

_here = Path(__file__).resolve().parent
CSRC = _here / "csrc"
HEADER = CSRC / "vx.h"
UNITS = (
    "codec", "offload", "tso", "gro", "tap", "udp", "table", "tx", "rx", "sender", "tgso", "loop"
)  # fmt: skip
SOURCES = [CSRC / f"{u}.c" for u in UNITS]

# cffi's cdef takes plain declarations: the header without its preprocessor lines
CDEF = "\n".join(
    line for line in HEADER.read_text().splitlines() if not line.lstrip().startswith("#")
)


def builder(module: str = "vxlanpy._native", extra: list[str] | None = None) -> FFI:
    """An FFI that builds the extension ``module`` (``extra``: more compiler flags)."""
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        module,
        '#include "vx.h"\n',
        include_dirs=[os.path.relpath(CSRC)],
        sources=[os.path.relpath(p) for p in SOURCES],
        extra_compile_args=["-O2", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", *(extra or [])],
        extra_link_args=list(extra or []),
    )
    return ffi


ffibuilder = builder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
