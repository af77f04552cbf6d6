"""`ingest tail` (and `ingest export`, the other tool that reads a store)
open the store read-only: a stopped node's store is neither grown nor
written, and a store they cannot read is one line on stderr and exit 1,
never a traceback (docs/storage.md "Opening a data directory")."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import lmdb
import pytest

from ingest import rules
from ingest.events import BindingEvent
from ingest.keys import FORMAT_VERSION
from ingest.store import Store

NOW = 1_700_000_000_000
TOOLS = {"tail": ["tail", "--after", "0"], "export": ["export", "tubes"]}


def make_store(path: str, n: int) -> None:
    """A stopped node's store: n bindings, a small map (as served by a
    config with a small store.map_bytes_initial)."""
    store = Store(path, map_bytes_initial=1 << 20)
    try:
        events = [BindingEvent(f"e{i}", "S1", "D1", f"T{i // 10:08d}", f"P{i:016d}", 10, NOW) for i in range(n)]
        store.write(lambda tx: [rules.apply_binding(tx, e, "LAB", 0) for e in events])
    finally:
        store.close()


def data_file(path: str) -> tuple[int, str]:
    with open(os.path.join(path, "data.mdb"), "rb") as f:
        raw = f.read()
    return len(raw), hashlib.sha256(raw).hexdigest()


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingest", *args], capture_output=True, text=True, timeout=60)


def test_tail_of_a_stopped_store_leaves_it_as_it_was(tmp_path):
    path = str(tmp_path / "d")
    make_store(path, 30)
    before, names = data_file(path), sorted(os.listdir(path))
    out = run("tail", "--data", path, "--after", "0")
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["event_id"] for line in out.stdout.splitlines()] == [f"e{i}" for i in range(30)]
    out = run("tail", "--data", path, "--after", "25")
    assert [json.loads(line)["event_id"] for line in out.stdout.splitlines()] == [f"e{i}" for i in range(25, 30)]
    assert data_file(path) == before  # not grown to a map, not written
    assert sorted(os.listdir(path)) == names


def refusal(tool: str, path: str) -> str:
    """The tool's stderr on an unreadable store: exit 1, nothing on stdout
    but the CSV header of export, no traceback."""
    out = run(*TOOLS[tool], "--data", path)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    assert out.stdout in ("", "tube,site_id,lab,pool_size,state,count,opened_seq,sealed_seq,box,result,result_seq\n")
    assert out.stderr.startswith(f"ingest: cannot read the store in {path}: "), out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    return out.stderr


@pytest.mark.parametrize("tool", TOOLS)
def test_a_garbage_data_file_is_refused_cleanly(tmp_path, tool):
    path = str(tmp_path / "d")
    os.mkdir(path)
    with open(os.path.join(path, "data.mdb"), "wb") as f:
        f.write(os.urandom(64 * 1024))
    before = data_file(path)
    assert "MDB_INVALID" in refusal(tool, path)
    assert data_file(path) == before


@pytest.mark.parametrize("tool", TOOLS)
def test_a_missing_directory_is_refused_cleanly(tmp_path, tool):
    path = str(tmp_path / "none")
    assert refusal(tool, path) == f"ingest: cannot read the store in {path}: no such directory\n"
    assert not os.path.exists(path)


@pytest.mark.parametrize("tool", TOOLS)
def test_an_empty_directory_is_no_store(tmp_path, tool):
    path = str(tmp_path / "d")
    os.mkdir(path)
    assert "no ingest store here" in refusal(tool, path)
    assert os.listdir(path) == []


@pytest.mark.parametrize("tool", TOOLS)
def test_a_store_of_another_format_is_refused_as_it_was(tmp_path, tool):
    path = str(tmp_path / "d")
    make_store(path, 5)
    env = lmdb.open(path, max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"format", (FORMAT_VERSION + 1).to_bytes(4, "big"), db=env.open_db(b"meta", txn=txn))
    env.close()
    before = data_file(path)
    assert f"store format {FORMAT_VERSION + 1}, this build reads {FORMAT_VERSION}" in refusal(tool, path)
    assert data_file(path) == before


@pytest.mark.parametrize("tool", TOOLS)
def test_a_foreign_lmdb_is_refused_as_it_was(tmp_path, tool):
    path = str(tmp_path / "d")
    env = lmdb.open(path, map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.close()
    before = data_file(path)
    assert "not an ingest store" in refusal(tool, path)
    assert data_file(path) == before


@pytest.mark.parametrize("tool", TOOLS)
def test_a_reader_that_went_away_ends_the_tool_quietly(tmp_path, tool):
    """`| head`: exit 1 as any Unix filter, no traceback, and no "Exception
    ignored" from the interpreter's last flush either."""
    path = str(tmp_path / "d")
    make_store(path, 300)  # tail writes past its buffer, export (30 tubes) only at the end
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = subprocess.run([sys.executable, "-m", "ingest", *TOOLS[tool], "--data", path], stdout=write_end,
                             stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert (out.returncode, out.stderr) == (1, "")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("tool", TOOLS)
def test_standard_output_that_cannot_be_written_is_one_line(tmp_path, tool):
    path = str(tmp_path / "d")
    make_store(path, 300)
    with open("/dev/full", "w") as full:
        out = subprocess.run([sys.executable, "-m", "ingest", *TOOLS[tool], "--data", path], stdout=full,
                             stderr=subprocess.PIPE, text=True, timeout=60)
    assert (out.returncode, out.stderr) == (1, "ingest: cannot write standard output: No space left on device\n")


@pytest.mark.parametrize("after", ["-1", str(2**64 - 1), "99999999999999999999999", "1.5"])
def test_after_that_is_no_seq_is_a_usage_error(tmp_path, after):
    out = run("tail", "--data", str(tmp_path), "--after", after)
    assert out.returncode == 2, out.stderr
    assert "argument --after" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_after_the_largest_seq_is_an_empty_tail(tmp_path):
    path = str(tmp_path / "d")
    make_store(path, 3)
    out = run("tail", "--data", path, "--after", str(2**64 - 2))
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
