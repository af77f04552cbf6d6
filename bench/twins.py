"""Benchmark parameters for a kernel and its plain-Python twin.

The compiled kernel is required unless INGEST_PURE_PYTHON=1, as everywhere
else: a missing build is an error, not a benchmark quietly run on the twin
alone (tests/helpers.compiled_kernel is the same rule for the test suite).
"""
from __future__ import annotations

import importlib
import os

import pytest


def kernel_and_twin(name: str, twin, attr: str | None = None) -> list:
    """pytest params `python` (the twin) and `cython` (`ingest.<name>`, or its
    `attr` when the twin given is a function rather than a module)."""
    try:
        compiled, missing = importlib.import_module(f"ingest.{name}"), ""
    except ImportError as exc:
        if os.environ.get("INGEST_PURE_PYTHON") != "1":
            raise
        compiled, missing = None, f"ingest.{name} is not importable ({exc}); only the Python twin runs"
    if compiled is not None and attr is not None:
        compiled = getattr(compiled, attr)
    return [
        pytest.param(twin, id="python"),
        pytest.param(compiled, id="cython", marks=pytest.mark.skipif(compiled is None, reason=missing)),
    ]
