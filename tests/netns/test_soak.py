"""A short soak (``make soak`` runs it for 10 minutes): 20 s of UDP at 10 kpps from vxlanpy to
the kernel's vxlan. vxlanpy's tx equals the peer's rx, every datagram iperf3 lost was dropped
at a counted place, RSS stays flat, the log has no exception, and it exits 0."""

from __future__ import annotations

import pytest

from benchmarks import soak
from vxlanpy.netns import Topology

pytestmark = pytest.mark.alone  # make test runs it after the parallel part (see Makefile)


def test_short_soak(topo: Topology) -> None:
    # `topo` only gates on privileges (skip, or fail under CI=true); the soak builds its own.
    out = soak.run(20.0, 10.0)
    print({k: v for k, v in out.items() if k != "failures"})
    assert out["failures"] == [], out
    assert out["vxlanpy_tx"] >= out["iperf_sent"] * 0.99  # the traffic went through vxlanpy
    assert out["rss_samples"] >= 15
