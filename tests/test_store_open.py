"""Opening a data directory: one process at a time (an flock on
ingest.lock), and only an ingest store of this format or nothing yet;
anything else is refused as it was found (docs/storage.md "Opening a data
directory")."""
from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import time

import lmdb
import pytest

from helpers import config_with, event, fresh_tube, stderr_lines
from ingest import rules
from ingest.events import BindingEvent
from ingest.datadir import LOCK_FILE
from ingest.keys import FORMAT_VERSION
from ingest.store import Store
from ingest.store_errors import StoreError, StoreInUse

NOW = 1_700_000_000_000
MAP = 1 << 20


def bind(store: Store, n: int) -> None:
    events = [BindingEvent(f"e{i}", "S1", "D1", f"T{i // 10:08d}", f"P{i:016d}", 10, NOW) for i in range(n)]
    store.write(lambda tx: [rules.apply_binding(tx, e, "LAB", 0) for e in events])


def files(path) -> dict[str, tuple[int, str]]:
    """Every file in the directory: size and SHA-256."""
    out = {}
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), "rb") as f:
            data = f.read()
        out[name] = (len(data), hashlib.sha256(data).hexdigest())
    return out


def serve(data, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingest", "serve", "--data", str(data), "--port", "0", *args],
                          capture_output=True, text=True, timeout=60)


# -- one process per directory -----------------------------------------------


def test_a_second_store_on_one_directory_is_refused(tmp_path):
    path = str(tmp_path / "d")
    first = Store(path, map_bytes_initial=MAP)
    try:
        with pytest.raises(StoreInUse, match=rf"^data directory {path} is in use by another ingest process "
                                             rf"\(pid {os.getpid()}\)$"):
            Store(path, map_bytes_initial=MAP)
        bind(first, 25)  # the refused one changed nothing under it
        assert first.last_seq == 25
    finally:
        first.close()
    assert LOCK_FILE not in os.listdir(path)  # released with the store
    again = Store(path, map_bytes_initial=MAP)
    try:
        assert again.last_seq == 25
    finally:
        again.close()


def test_a_second_server_is_refused_and_the_first_keeps_writing(server_factory):
    # A small map that has grown: the second server's writemap open used to
    # cut data.mdb back to its own map size, and the first died of SIGBUS.
    config = config_with(store={"map_bytes_initial": MAP})
    first = server_factory(config)
    for _ in range(6):
        status, _, body = first.batch([event(pool_size=1) for _ in range(500)])
        assert status == 200, body
    second = serve(first.data, "--config", str(first.config_path))
    assert second.returncode == 1, second.stderr
    assert stderr_lines(second.stderr) == [f"ingest: cannot open the store in {first.data}: data directory "
                                           f"{first.data} is in use by another ingest process (pid {first.proc.pid})"]
    status, _, body = first.batch([event(pool_size=1) for _ in range(500)])
    assert status == 200 and {r["status"] for r in body["results"]} == {201}, body
    assert first.post(event(fresh_tube()))[0] == 201
    # The kernel drops the lock with its process: a restart after SIGKILL opens.
    first.kill()
    again = server_factory(config, data=first.data)
    assert again.post(event(fresh_tube()))[0] == 201


# -- only ingest stores of this format ----------------------------------------


def foreign_keys(txn, env) -> None:
    for i in range(3):
        txn.put(b"k%03d" % i, b"v")


def foreign_meta_without_format(txn, env) -> None:
    meta = env.open_db(b"meta", txn=txn)
    txn.put(b"last_seq", (7).to_bytes(8, "big"), db=meta)


@pytest.mark.parametrize("fill", [foreign_keys, foreign_meta_without_format])
def test_a_foreign_lmdb_is_refused_as_found(tmp_path, fill):
    path = str(tmp_path / "d")
    env = lmdb.open(path, map_size=MAP, max_dbs=4)
    with env.begin(write=True) as txn:
        fill(txn, env)
    env.close()
    before = files(path)
    with pytest.raises(StoreError, match=r"not an ingest store"):
        Store(path, map_bytes_initial=4 * MAP)
    assert files(path) == before  # not grown, no table, no format, no lock file


def test_a_store_of_another_format_is_refused_as_found(tmp_path):
    path = str(tmp_path / "d")
    store = Store(path, map_bytes_initial=MAP)
    bind(store, 5)
    store.close()
    env = lmdb.open(path, max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"format", (FORMAT_VERSION + 1).to_bytes(4, "big"), db=env.open_db(b"meta", txn=txn))
        txn.drop(env.open_db(b"stats", txn=txn), delete=True)  # a table this build would add
    env.close()
    before = files(path)
    with pytest.raises(StoreError, match=rf"store format {FORMAT_VERSION + 1}, this build reads {FORMAT_VERSION}"):
        Store(path, map_bytes_initial=4 * MAP)
    assert files(path) == before


def test_a_new_empty_environment_is_initialised(tmp_path):
    path = str(tmp_path / "d")
    lmdb.open(path, map_size=MAP).close()  # an environment with no key yet
    store = Store(path, map_bytes_initial=MAP)
    try:
        bind(store, 3)
        assert store.last_seq == 3
    finally:
        store.close()


def test_a_file_as_data_directory_is_not_a_directory(tmp_path):
    path = tmp_path / "afile"
    path.write_text("")
    with pytest.raises(StoreError, match="not a directory"):
        Store(str(path))
    out = serve(path)
    assert out.returncode == 1
    assert stderr_lines(out.stderr) == [f"ingest: cannot open the store in {path}: not a directory"]


def test_a_truncated_store_is_refused_not_a_sigbus(tmp_path):
    """LMDB maps data.mdb and reads a page past its end as a SIGBUS: a
    partial copy of a store killed serve, tail and export without a word."""
    path = tmp_path / "d"
    store = Store(str(path), map_bytes_initial=MAP)
    bind(store, 3000)
    store.close()
    os.truncate(path / "data.mdb", 64 * 4096)
    before = files(path)
    out = serve(path)
    assert out.returncode == 1, out.stderr
    assert "data.mdb is truncated" in out.stderr and "Traceback" not in out.stderr
    for command in (["export", "bindings"], ["tail", "--after", "0"]):
        out = subprocess.run([sys.executable, "-m", "ingest", *command, "--data", str(path)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "data.mdb is truncated" in out.stderr, (command, out.stderr)
    assert files(path)["data.mdb"] == before["data.mdb"]  # lock.mdb is LMDB's reader table


# -- person data is its user's alone ---------------------------------------------


def test_a_new_data_directory_and_its_files_are_the_users_alone(server_factory, tmp_path):
    # The store holds every resident's identity number: no other local user reads it.
    data = tmp_path / "new" / "data"
    srv = server_factory(data=data)
    assert srv.post(event(fresh_tube()))[0] == 201
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    for name in ("data.mdb", "lock.mdb", "ingest.lock"):
        assert stat.S_IMODE(os.stat(data / name).st_mode) == 0o600, name
    assert "open to other users of this host" not in srv.stderr_text()


def test_serve_warns_of_a_data_directory_open_to_others(server_factory, tmp_path):
    data = tmp_path / "shared"
    data.mkdir()
    os.chmod(data, 0o755)  # as a umask of 022 leaves a directory made by hand
    srv = server_factory(data=data)
    warnings = [line for line in srv.stderr_text().splitlines() if "open to other users of this host" in line]
    assert len(warnings) == 1 and f"{data} (mode 0755)" in warnings[0], srv.stderr_text()
    assert srv.post(event(fresh_tube()))[0] == 201  # a warning, not a refusal: the operator may mean it


# -- readers that died reading ------------------------------------------------------


def killed_reader(path) -> int:
    """A process that opened the store as `ingest export` does, began its
    read transaction and was SIGKILLed (the OOM killer, a lost session):
    its slot stays in lock.mdb. Returns its pid."""
    code = ("import lmdb, sys, time; env = lmdb.open(sys.argv[1], readonly=True, lock=True, max_dbs=32); "
            "txn = env.begin(); print('reading', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "reading\n"
    proc.kill()
    proc.wait(10)
    return proc.pid


def reader_pids(store: Store) -> str:
    return store.env.readers()


def test_the_slot_of_a_reader_that_died_is_freed(tmp_path):
    # Held, it keeps LMDB from reusing any page freed after its snapshot:
    # the store grows with every commit until the disk is full.
    path = tmp_path / "d"
    store = Store(str(path), map_bytes_initial=MAP)
    try:
        bind(store, 10)
        pid = killed_reader(path)
        assert f"{pid} " in reader_pids(store)
        assert store.reader_check() == 1
        assert f"{pid} " not in reader_pids(store)
        assert store.reader_check() == 0
    finally:
        store.close()


def test_serve_frees_the_slots_of_readers_that_died_beside_it(server_factory, tmp_path):
    # (At start there is nothing to free: the first process to open an
    # environment resets its reader table.)
    srv = server_factory()
    assert srv.post(event(fresh_tube()))[0] == 201
    killed_reader(srv.data)
    deadline = time.monotonic() + 20  # the server looks every READER_CHECK_S
    while "freed 1 reader slot(s)" not in srv.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "freed 1 reader slot(s) of processes that died reading the store" in srv.stderr_text()
    assert srv.post(event(fresh_tube()))[0] == 201
