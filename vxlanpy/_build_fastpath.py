"""cffi out-of-line API build of the fast path: ``vxlanpy/_fastpath.c`` -> ``vxlanpy._fastpath_c``.

Run by setuptools through ``cffi_modules`` (see setup.py); never imported at run time.
"""

from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

CDEF = """
uint32_t vx_flow_hash(const uint8_t *frame, uint32_t len);
void vx_encap_batch(uint8_t *buf, uint32_t slot, uint32_t headroom, uint32_t n,
                    const uint32_t *frame_len, const uint32_t *vni, uint32_t *payload_len,
                    uint16_t *sport, uint32_t lo, uint32_t hi);
void vx_decap_batch(const uint8_t *buf, uint32_t slot, uint32_t headroom, uint32_t n,
                    const uint32_t *payload_len, int strict, uint32_t *vni, int32_t *status,
                    uint32_t *frame_len);
uint32_t vx_complete_checksums(uint8_t *buf, uint32_t slot, uint32_t headroom, uint32_t n,
                               const uint32_t *frame_len);
uint32_t vx_tso_segment(const uint8_t *f, uint32_t len, uint32_t gso_size, uint32_t vni,
                        uint8_t *out, uint32_t slot, uint32_t headroom, uint32_t max_frame,
                        uint32_t first, uint32_t capacity, uint32_t *frame_len,
                        uint32_t *vni_out);
"""

# Batched syscalls (vxlanpy/_fastio.c), built into the same extension.
IO_CDEF = """
int vx_send_batch(int fd, uint8_t *buf, uint32_t slot, uint32_t headroom, uint32_t first,
                  uint32_t n, const uint32_t *payload_len, const void *addr, uint32_t addrlen);
int vx_send_gso(int fd, uint8_t *buf, uint32_t slot, uint32_t headroom, uint32_t first,
                uint32_t n, const uint32_t *payload_len, const void *addr, uint32_t addrlen);
int vx_tap_write(int fd, uint8_t *buf, uint32_t slot, uint32_t headroom, const uint32_t *slots,
                 uint32_t n, const uint32_t *frame_len, uint32_t vnet, uint32_t mtu,
                 uint32_t *errors);
int vx_recv_batch(int fd, uint8_t *buf, uint32_t slot, uint32_t headroom, uint32_t first,
                  uint32_t cap, uint32_t max_payload, uint32_t *payload_len, uint8_t *addrs,
                  uint32_t *truncated);
"""

_here = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.cdef(IO_CDEF)
ffibuilder.set_source(
    "vxlanpy._fastpath_c",
    "#include <stdint.h>\n" + CDEF + IO_CDEF,
    sources=[os.path.relpath(_here / "_fastpath.c"), os.path.relpath(_here / "_fastio.c")],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
