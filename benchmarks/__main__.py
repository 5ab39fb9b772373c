"""``python -m benchmarks [micro|e2e|scale] [options]``: the benchmark harness (``make bench``).

micro   header pack/parse, engine per frame, FDB at 10^3/10^5/10^6 (pytest-benchmark)
e2e     kernel-kernel, vxlanpy-kernel, vxlanpy-vxlanpy, naive-naive in namespaces (root)
scale   cost as the work grows: VNIs, flood remotes, FDB entries, memory (root; make scale)
"""

from __future__ import annotations

import sys


def main() -> int:
    args = sys.argv[1:]
    what = args.pop(0) if args and args[0] in ("micro", "e2e", "scale") else "e2e"
    if what == "micro":
        from benchmarks.micro_bench import main as micro

        return micro(args)
    if what == "scale":
        from benchmarks.scale import main as scale

        return scale(args)
    from benchmarks.e2e import main as e2e

    return e2e(args)


if __name__ == "__main__":
    sys.exit(main())
