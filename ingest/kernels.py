"""Which implementation of the native kernels runs: one switch for all.

Each kernel is a compiled module built from ``ext/<name>.pyx`` (``ingest._x``)
with a plain-Python twin of the same names and behaviour (``ingest._x_py``).
The compiled one runs by default; ``INGEST_PURE_PYTHON=1`` selects every twin
(correct, slower). A missing or broken extension is an import error that says
how to fix it, never a silent slow mode.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

PURE_PYTHON = os.environ.get("INGEST_PURE_PYTHON") == "1"
IMPLEMENTATION = "python" if PURE_PYTHON else "cython"


def load(compiled: str, twin: str) -> ModuleType:
    """The module that runs: `ingest.<compiled>`, or `ingest.<twin>` when forced."""
    if PURE_PYTHON:
        return importlib.import_module(f"ingest.{twin}")
    try:
        return importlib.import_module(f"ingest.{compiled}")
    except ImportError as exc:
        raise ImportError(
            f"the compiled extension ingest.{compiled} is missing or broken "
            f"({exc}). Reinstall with `pip install -e .`, which builds it "
            "(a C compiler is needed), or set INGEST_PURE_PYTHON=1 to run "
            "the slow pure-Python twin knowingly."
        ) from exc
