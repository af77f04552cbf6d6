"""The `ingest` command: help, configuration errors, a busy port, which
kernels run, and signals."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest

from helpers import HOUR_MS, LABS_TOML, config_with, event, fresh_person, now_ms

RUN_TIMEOUT_S = 60


def ingest(*args, cwd, env=None, timeout=RUN_TIMEOUT_S):
    return subprocess.run(
        [sys.executable, "-m", "ingest", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_serve_help(tmp_path):
    result = ingest("serve", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("--data", "--host", "--port", "--config", "--log-level"):
        assert option in result.stdout
    assert not (tmp_path / "data").exists()


def test_top_level_help_and_missing_command(tmp_path):
    result = ingest("--help", cwd=tmp_path)
    assert result.returncode == 0 and "serve" in result.stdout
    result = ingest(cwd=tmp_path)
    assert result.returncode == 2
    assert "serve" in result.stderr or "command" in result.stderr


@pytest.mark.parametrize(
    "text, named",
    [
        (config_with(limits={"body_bytes_maxx": 1}), "body_bytes_maxx"),
        (config_with(limits={"body_bytes_max": "big"}), "body_bytes_max"),
        (config_with(limits={"request_seconds_max": -1.0}), "request_seconds_max"),
        (config_with(limits={"connections_max": 0}), "connections_max"),
        (config_with(rules={"person_other_tube_window_hours": "12h"}), "person_other_tube_window_hours"),
        ("[limitz]\nbody_bytes_max = 1\n" + LABS_TOML, "limitz"),
        (LABS_TOML.replace('charset = "digits"', 'charset = "hex"', 1), "charset"),
        (LABS_TOML + '\n[[labs]]\nid = "X"\nprefix = "10"\nlength = 12\ncharset = "digits"\ncheck = "luhn"\nextra = 1\n',
         "extra"),
        ("[limits]\nbody_bytes_max = 1\n", "labs"),
        (config_with(store={"map_bytes_initial": 2 << 30, "map_bytes_max": 1 << 30}), "map_bytes_initial"),
        ("[limits\nbody_bytes_max = 1\n", "config"),
    ],
    ids=["unknown-key", "wrong-type", "negative", "zero", "rules-type", "unknown-section", "bad-charset",
         "unknown-lab-key", "no-labs", "map-sizes", "toml-syntax"],
)
def test_bad_config_exits_2_naming_the_key(tmp_path, text, named):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = ingest("serve", "--data", str(tmp_path / "data"), "--port", "0", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr, result.stderr
    assert result.stderr.startswith("ingest: config")
    assert "Traceback" not in result.stderr
    # Refused before anything was opened.
    assert not (tmp_path / "data").exists()


def test_missing_config_file_exits_2(tmp_path):
    missing = tmp_path / "nope.toml"
    result = ingest("serve", "--data", str(tmp_path / "data"), "--port", "0", "--config", str(missing), cwd=tmp_path)
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = ingest("serve", "--data", str(tmp_path / "data"), "--host", "127.0.0.1", "--port", str(port),
                        cwd=tmp_path)
    assert result.returncode not in (0, None)
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr, result.stderr
    assert "in use" in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_bad_port_argument(tmp_path):
    result = ingest("serve", "--port", "eighty", cwd=tmp_path)
    assert result.returncode == 2
    assert "--port" in result.stderr


@pytest.mark.parametrize("pure, implementation", [(None, "cython"), ("1", "python")])
def test_status_and_log_say_which_kernels_run(server_factory, pure, implementation):
    server = server_factory(env={"INGEST_PURE_PYTHON": pure})
    assert server.status()["implementation"] == implementation
    log = server.stderr_text()
    serving = [line for line in log.splitlines() if "serving on" in line]
    assert len(serving) == 1
    assert f"kernels={implementation}" in serving[0]
    assert f"127.0.0.1:{server.port}" in serving[0]
    assert ("pure-Python kernels" in log) == (implementation == "python")
    samples = server.metrics()
    assert samples[("ingest_build_info", frozenset({("implementation", implementation)}))] == 1


def test_sigint_drains_and_exits_0(server_factory):
    server = server_factory()
    assert server.post(event())[0] == 201
    assert server.terminate(signal.SIGINT) == 0
    log = server.stderr_text()
    assert "SIGINT: draining" in log
    assert "stopped; last_seq=1" in log


def test_config_limits_are_applied(server_factory):
    server = server_factory(config=config_with(limits={"body_bytes_max": 1000}))
    status, _, body = server.request("POST", "/v1/bindings", b" " * 1001, {"Content-Type": "application/json"})
    assert status == 413 and body["error"]["code"] == "body_too_large"
    status, _, body = server.request("POST", "/v1/bindings", b" " * 998 + b"{}", {"Content-Type": "application/json"})
    assert status == 400 and body["error"]["code"] == "malformed"


def test_config_rules_are_applied(server_factory):
    """A 1-hour person window (instead of 12 h): a scan 2 h after the first
    one is outside it."""
    server = server_factory(config=config_with(rules={"person_other_tube_window_hours": 1}))
    person = fresh_person()
    assert server.post(event(person=person, scanned_at=now_ms() - 2 * HOUR_MS))[0] == 201
    assert server.post(event(person=person))[0] == 201
    status, _, body = server.post(event(person=person, scanned_at=now_ms() - 30 * 60_000))
    assert status == 409 and body["error"]["code"] == "person_in_other_tube"
