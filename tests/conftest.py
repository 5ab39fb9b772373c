"""Shared fixtures. ``kernels`` runs a test once per fast-path backend (C via cffi, and Python)."""

from __future__ import annotations

import os

import pytest

from vxlanpy import kernels as _kernels


@pytest.fixture(scope="session", params=["cffi", "python"])
def kernels(request: pytest.FixtureRequest) -> _kernels.Backend:
    """A fast-path backend; every test that takes it runs on both. Session-scoped: backends are
    stateless (views are cached on each batch), and hypothesis tests may use it."""
    try:
        return _kernels.load(request.param)
    except ImportError as exc:
        if os.environ.get("VXLANPY_REQUIRE_C", "").strip().lower() in ("1", "true", "yes", "on"):
            raise
        pytest.skip(f"C fast path not built: {exc}")
