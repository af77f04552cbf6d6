"""Fixtures that start real `ingest serve` processes.

`server_factory(config=None, env=None, data=None)` starts a server (its own
tmp data dir unless `data` is given; `config` is TOML text written to a tmp
file and passed with --config; `env` overrides the environment, None removes
a variable) and returns a helpers.ServerProcess once GET /livez answers.
At teardown every server still running gets SIGTERM and must exit 0 within
30 s, unless the test killed it.

INGEST_PURE_PYTHON passes through to the servers: the suite runs in both modes.
"""
from __future__ import annotations

import pytest

from helpers import ServerFactory


@pytest.fixture
def server_factory(tmp_path):
    factory = ServerFactory(tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def module_server_factory(tmp_path_factory, request):
    factory = ServerFactory(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def server(module_server_factory):
    """One server with the shipped configuration, shared by a module's tests
    (they use distinct tubes, persons and event ids)."""
    return module_server_factory()
