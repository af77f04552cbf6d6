"""Builds the native extension (``ext/*.pyx`` -> ``ingest._codes`` ...).

There is deliberately no fallback: if Cython or a C compiler is missing the
install fails, because a silently slow server is worse than a loud install
error. ``INGEST_PURE_PYTHON=1`` at *run* time selects the Python twins.
Options, as uvloop does them, through the environment:
  INGEST_CYTHON_ANNOTATE=1  also write the HTML annotation next to each .pyx
"""
import os
from pathlib import Path

from setuptools import Extension, setup

CYTHON_REQUIREMENT = "Cython>=3.0.10,<4"

try:
    from Cython.Build import cythonize
except ImportError as exc:  # pragma: no cover - install-time only
    raise RuntimeError(
        f"building ingest needs {CYTHON_REQUIREMENT}; install it "
        f"(pip does this itself from pyproject.toml) and retry"
    ) from exc

# Every ext/<name>.pyx is a kernel, built as ingest.<name>; its Python twin
# is ingest/<name>_py.py (ingest/kernels.py picks one at import).
KERNELS = sorted(path.stem for path in Path(__file__).parent.joinpath("ext").glob("*.pyx"))

extensions = [
    Extension(
        f"ingest.{name}",
        [f"ext/{name}.pyx"],
        extra_compile_args=["-O3"],
    )
    for name in KERNELS
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level="3",
        annotate=os.environ.get("INGEST_CYTHON_ANNOTATE") == "1",
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    ),
)
