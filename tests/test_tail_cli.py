"""`ingest tail` (and `ingest export`, the other tool that reads a store)
open the store read-only: a stopped node's store is neither grown nor
written, and a store they cannot read is one line on stderr and exit 1,
never a traceback (docs/storage.md "Opening a data directory")."""
from __future__ import annotations

import hashlib
import json
import os
import stat
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
    assert [json.loads(line)["body"]["event_id"] for line in out.stdout.splitlines()] == [f"e{i}" for i in range(30)]
    out = run("tail", "--data", path, "--after", "25")
    assert [json.loads(line)["body"]["event_id"] for line in out.stdout.splitlines()] == [f"e{i}" for i in range(25, 30)]
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


def test_after_the_stores_last_seq_is_an_empty_tail(tmp_path):
    path = str(tmp_path / "d")
    make_store(path, 3)
    out = run("tail", "--data", path, "--after", "3")
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


@pytest.mark.parametrize("after", ["4", str(2**64 - 2)])
def test_after_past_the_stores_last_seq_is_refused(tmp_path, after):
    # The promoted node's last seq read from `ingest status` after more
    # writes is past the dead primary's: the tail came out empty, exit 0,
    # and the next documented step threw the acknowledged tail away.
    path = str(tmp_path / "d")
    make_store(path, 3)
    out = run("tail", "--data", path, "--after", after)
    assert out.returncode == 1 and out.stdout == "", out
    assert f"ends at seq 3, before --after {after}" in out.stderr and "ingest promote" in out.stderr


def test_tail_out_is_the_users_alone_and_a_refused_tail_leaves_none(tmp_path):
    # The tail holds person codes: through the shell's `>` it would get the
    # umask's 0644, as no export does.
    path = str(tmp_path / "d")
    make_store(path, 3)
    out_file = tmp_path / "tail.jsonl"
    out = run("tail", "--data", path, "--after", "1", "--out", str(out_file))
    assert (out.returncode, out.stdout, out.stderr) == (0, "", ""), out
    assert stat.S_IMODE(os.stat(out_file).st_mode) == 0o600
    assert out_file.read_text() == run("tail", "--data", path, "--after", "1").stdout
    assert [json.loads(line)["body"]["event_id"] for line in out_file.read_text().splitlines()] == ["e1", "e2"]
    refused = tmp_path / "refused.jsonl"
    out = run("tail", "--data", path, "--after", "4", "--out", str(refused))
    assert out.returncode == 1 and "ends at seq 3, before --after 4" in out.stderr, out
    assert not refused.exists()
    link = tmp_path / "link.jsonl"
    link.symlink_to(out_file)
    out = run("tail", "--data", path, "--after", "0", "--out", str(link))
    assert out.returncode == 1 and "is a symbolic link" in out.stderr, out
    assert len(out_file.read_text().splitlines()) == 2


def without_seqs(value):
    """A read answer without the fields that number the store's entries:
    a replay puts the same events under other seqs."""
    if isinstance(value, dict):
        return {k: without_seqs(v) for k, v in value.items() if not k.endswith("seq")}
    if isinstance(value, list):
        return [without_seqs(v) for v in value]
    return value


def test_the_tail_replays_a_whole_day_onto_another_server(server_factory):
    # After an async failover the dead primary's tail holds acknowledged
    # seals, boxes, receipts and results as well as bindings: each is
    # written out as the request that made it, and replaying them all gives
    # another server the same tubes, people, boxes and positives.
    from helpers import event, fresh_event_id, fresh_person, luhn_tube, next_n, now_ms

    a = server_factory()
    site = f"SITE-TAIL-{next_n()}"
    t1, t2 = luhn_tube(next_n()), luhn_tube(next_n())
    box1, box2 = f"BOX-{next_n()}", f"BOX-{next_n()}"
    binds = [event(t1, fresh_person(), site_id=site) for _ in range(3)] + [event(t2, fresh_person(), site_id=site)]
    steps = [("POST", "/v1/bindings", ev) for ev in binds[:3]] + [
        ("POST", f"/v1/bindings/{binds[1]['event_id']}/void",
         {"event_id": fresh_event_id("void"), "device_id": "D", "reason": "wrong person", "voided_at": now_ms()}),
        ("POST", f"/v1/tubes/{t1}/seal",
         {"event_id": fresh_event_id("seal"), "site_id": site, "device_id": "D", "sealed_at": now_ms()}),
        ("POST", "/v1/bindings", binds[3]),
        ("POST", f"/v1/tubes/{t2}/seal",
         {"event_id": fresh_event_id("seal"), "site_id": site, "device_id": "D", "sealed_at": now_ms()}),
    ]
    for box, tube in ((box1, t1), (box2, t2)):
        steps += [
            ("POST", "/v1/boxes", {"event_id": fresh_event_id("box"), "box": box, "site_id": site, "device_id": "D",
                                   "tubes": [tube], "packed_at": now_ms()}),
            ("POST", f"/v1/boxes/{box}/handover",
             {"event_id": fresh_event_id("hand"), "courier_id": "C1", "handed_at": now_ms()}),
        ]
    steps += [
        ("POST", f"/v1/boxes/{box1}/receive",
         {"event_id": fresh_event_id("recv"), "lab_id": "DEMO-LUHN", "tubes": [t1], "received_at": now_ms()}),
        ("POST", f"/v1/tubes/{t2}/receive",  # a tube received on its own
         {"event_id": fresh_event_id("recv"), "lab_id": "DEMO-LUHN", "received_at": now_ms()}),
        ("POST", "/v1/results", {"results": [
            {"event_id": fresh_event_id("res"), "lab_id": "DEMO-LUHN", "tube": t1, "result": "positive",
             "tested_at": now_ms()},
            {"event_id": fresh_event_id("res"), "lab_id": "DEMO-LUHN", "tube": t2, "result": "negative",
             "tested_at": now_ms()}]}),
    ]
    for method, path, body in steps:
        status, _, got = a.request(method, path, body)
        assert status in (200, 201), (path, got)
        assert all(item["status"] == 201 for item in got.get("results", [])), got

    def views(srv) -> list:
        paths = [f"/v1/tubes/{t1}", f"/v1/tubes/{t2}", f"/v1/boxes/{box1}", f"/v1/boxes/{box2}",
                 "/v1/positives?since=0"] + [f"/v1/persons/{ev['person']}" for ev in binds]
        answers = [srv.request("GET", path) for path in paths]
        assert all(status == 200 for status, _, _ in answers), answers
        return without_seqs([body for _, _, body in answers])

    before = views(a)
    positive = before[4]["positives"]
    assert [p["tube"] for p in positive] == [t1] and len(positive[0]["persons"]) == 2  # one was voided
    a.stop()
    out = run("tail", "--data", str(a.data), "--after", "0")
    assert out.returncode == 0, out.stderr
    tail = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["kind"] for r in tail] == ["binding"] * 3 + ["void", "seal", "binding", "seal"] + \
        ["box", "handover"] * 2 + ["receive", "receive_tube", "result", "result"]
    assert [r["seq"] for r in tail] == list(range(1, len(tail) + 1))
    # a binding is the event as it was sent: a replay sends the same event again
    assert [r["body"] for r in tail if r["kind"] == "binding"] == [binds[0], binds[1], binds[2], binds[3]]
    out = run("tail", "--data", str(a.data), "--after", "12")
    assert [json.loads(line) for line in out.stdout.splitlines()] == tail[12:]

    b = server_factory()
    for request in tail:
        assert request["method"] == "POST"
        status, _, got = b.request("POST", request["path"], request["body"])
        assert status in (200, 201), (request, got)
        assert all(item["status"] == 201 for item in got.get("results", [])), got
    assert views(b) == before
    for request in tail:  # and a second replay changes nothing
        status, _, got = b.request("POST", request["path"], request["body"])
        assert status == 200 and "duplicate" in json.dumps(got), (request, got)
    assert views(b) == before
