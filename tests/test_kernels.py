"""Every kernel behind the one switch (ingest/kernels.py): with its extension
missing, the module that uses it refuses to import and says how to fix it,
instead of running a silently slow server."""
import pytest
from helpers import run_python

from ingest import kernels

# compiled module -> the public module that loads it
KERNELS = {
    "ingest._codes": "ingest.codes",
    "ingest._http": "ingest.http",
    "ingest._protocol": "ingest.protocol",
    "ingest._apply": "ingest.rules",
    "ingest._binding_routes": "ingest.app",
}


def test_every_ext_source_is_listed():
    from pathlib import Path

    sources = {f"ingest.{p.stem}" for p in (Path(__file__).resolve().parents[1] / "ext").glob("*.pyx")}
    assert sources == set(KERNELS)


@pytest.mark.parametrize("compiled, public", KERNELS.items())
def test_missing_extension_fails_loudly(compiled, public):
    result = run_python(
        "import sys\n"
        f"sys.modules[{compiled!r}] = None\n"
        "try:\n"
        f"    import {public}\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('imported')\n",
        pure=False,
    )
    message = result.stdout
    assert compiled in message, result.stderr
    assert "pip install -e ." in message
    assert "C compiler" in message
    assert "INGEST_PURE_PYTHON=1" in message


@pytest.mark.parametrize("compiled, public", KERNELS.items())
def test_the_twins_need_no_extension(compiled, public):
    result = run_python(
        "import sys\n"
        f"sys.modules[{compiled!r}] = None\n"
        f"import {public}\n"
        "from ingest import kernels\n"
        "print(kernels.IMPLEMENTATION)\n",
        pure=True,
    )
    assert result.stdout.strip() == "python", result.stderr


def test_the_switch_says_which_runs():
    assert kernels.IMPLEMENTATION == ("python" if kernels.PURE_PYTHON else "cython")
