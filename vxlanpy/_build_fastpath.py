"""cffi out-of-line API build of the fast path: ``_fastpath.c``, ``_fastio.c``, ``_fastdp.c`` and
``_fastgro.c``, declared in ``_fastpath.h`` -> ``vxlanpy._fastpath_c``.

Run by setuptools through ``cffi_modules`` (see setup.py); never imported at run time.
"""

from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

_here = Path(__file__).resolve().parent
HEADER = _here / "_fastpath.h"

# cffi's cdef takes plain declarations: the header without its preprocessor lines
CDEF = "\n".join(
    line for line in HEADER.read_text().splitlines() if not line.lstrip().startswith("#")
)


# the C sources of the extension, next to this file (the fuzzing build, fuzz/build_asan.py,
# compiles the same list with sanitizers)
SOURCES = ("_fastpath.c", "_fastio.c", "_fastdp.c", "_fastgro.c")
SOURCE_INCLUDE = '#include "_fastpath.h"\n'

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "vxlanpy._fastpath_c",
    SOURCE_INCLUDE,
    include_dirs=[os.path.relpath(_here)],
    sources=[os.path.relpath(_here / p) for p in SOURCES],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
