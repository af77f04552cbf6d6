"""Opening a data directory: its lock, the checks made before a store is
opened for writing, and the read-only opening of the tools (docs/storage.md,
"Opening a data directory")."""
from __future__ import annotations

import fcntl
import os
import stat

import lmdb

from ingest.keys import FORMAT, FORMAT_VERSION, TABLES, first_seq
from ingest.store_errors import StoreError, StoreInUse

# One process per data directory: LMDB does not stop a second writer, and
# with writemap the second one's open truncates data.mdb to its own map size
# under the first (SIGBUS on its next write). The lock is an flock on this
# file, which holds the holder's pid for the refusal message.
LOCK_FILE = "ingest.lock"


# The store holds every resident's identity number: a directory it makes,
# and the files LMDB makes in it, are for the service's own user alone.
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600


def make_directory(path: str) -> None:
    try:
        os.makedirs(path, mode=DIRECTORY_MODE, exist_ok=True)
    except FileExistsError:  # what makedirs says of a file in the way
        raise StoreError(f"{path}: not a directory") from None


def open_to_others(path: str) -> list[str]:
    """The data directory and its store files that other local users may
    enter or read (group or other permission bits), as "PATH (mode 0NNN)".
    Ones made here never are; an operator's own directory may be."""
    out = []
    for name in ("", "data.mdb", "lock.mdb"):
        full = os.path.join(path, name) if name else path
        try:
            mode = stat.S_IMODE(os.stat(full).st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            out.append(f"{full} (mode {mode:04o})")
    return out


def _lock_holder(fd: int) -> str:
    raw = os.pread(fd, 32, 0).strip()
    return f"pid {int(raw)}" if raw.isdigit() else "pid unknown"


def lock_directory(path: str, shared: bool = False) -> int | None:
    """Take the data directory's lock without waiting, or raise StoreInUse;
    returns the fd that holds it (closing it releases the lock).

    An flock belongs to the open file, so the kernel drops it when its
    process dies, SIGKILL included: no stale lock to clean up. Store removes
    the file at close (the directory holds only the store then), so a lock
    taken on a file no longer at its path is the previous holder's: taken
    again on the new one.

    `shared` is for a reader without LMDB's lock (StoreReader), which must
    not read beside a writer. It may not write, so it neither creates nor
    changes the file: None when there is none (no ingest process has the
    store open)."""
    lock_path = os.path.join(path, LOCK_FILE)
    while True:
        try:
            if shared:
                fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
            else:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except FileNotFoundError:
            if shared:
                return None
            raise
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            if _same_file(fd, lock_path):
                break
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise StoreInUse(f"data directory {path} is in use by another ingest process ({holder})") from None
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    if not shared:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino)


def unlock_directory(path: str, fd: int) -> None:
    """Release Store's lock: the file goes first, while it is still held."""
    try:
        os.unlink(os.path.join(path, LOCK_FILE))
    except OSError:
        pass  # left behind, as after a kill: the next opener takes it over
    os.close(fd)


def check_format(env: lmdb.Environment, path: str) -> bool:
    """Whether `env` is new (no key at all: to be initialised). Raises
    StoreError unless it is an ingest store of this format. Reads only, so
    a store refused here is left as it was."""
    _check_complete(env, path)
    with env.begin() as txn:
        if not txn.cursor().first():
            return True
    try:
        meta = env.open_db(b"meta", create=False)
    except lmdb.Error:  # NotFoundError, or IncompatibleError: a plain key "meta"
        raise StoreError(f"{path}: not an ingest store (an LMDB environment without its meta table)") from None
    with env.begin(db=meta) as txn:
        fmt = txn.get(FORMAT)
    if fmt is None:
        raise StoreError(f"{path}: not an ingest store (no format in its meta table)")
    if int.from_bytes(fmt, "big") != FORMAT_VERSION:
        raise StoreError(f"{path}: store format {int.from_bytes(fmt, 'big')}, this build reads {FORMAT_VERSION}")
    return False


def _check_complete(env: lmdb.Environment, path: str) -> None:
    """LMDB maps data.mdb and trusts it to hold every page its meta page
    names: in a truncated file (a partial copy, a full disk) the first read
    past the end is a SIGBUS that kills the process without a word. The meta
    pages are read with read(2) at open, so their last page number is known
    before any page is touched."""
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    have = os.path.getsize(os.path.join(path, "data.mdb"))
    if have < need:
        raise StoreError(f"{path}: data.mdb is truncated: {have} bytes, its pages need {need}")


def open_readonly(path: str, lock: bool) -> lmdb.Environment:
    # No writemap and no map size of ours: nothing is allocated, and
    # data.mdb is neither grown nor written.
    return lmdb.open(path, readonly=True, lock=lock, max_dbs=len(TABLES) + 4, readahead=False)


def is_new(path: str) -> bool:
    """Whether there is no store yet (Store initialises one). Whatever is
    there is checked with a read-only open: StoreError unless it is an
    ingest store of this format."""
    data_file = os.path.join(path, "data.mdb")
    if not os.path.exists(data_file) or os.path.getsize(data_file) == 0:
        return True  # LMDB creates the file before its first page: a first open was killed
    # lock=False: the caller holds the directory's lock, no ingest process writes.
    env = open_readonly(path, lock=False)
    try:
        return check_format(env, path)
    finally:
        env.close()


class StoreReader:
    """A store opened for reading only, by the tools that read the store of
    a stopped node (`ingest tail`) or beside a running one (`ingest
    export`): no writemap and no allocation, so data.mdb is neither grown
    nor written; the format is checked as at Store's open.

    Raises StoreError, its text without the leading path (the caller says
    "cannot read the store in DIR")."""

    def __init__(self, path: str):
        self.path = path
        self.env: lmdb.Environment | None = None
        self._lock_fd: int | None = None
        try:
            self.env = self._open()
            if check_format(self.env, path):
                raise StoreError("no ingest store here (an empty LMDB environment)")
            self.dbs = {name: self._table(name) for name in TABLES}
        except (lmdb.Error, StoreError, OSError) as exc:
            self.close()
            text = getattr(exc, "strerror", None) or str(exc)
            raise StoreError(text.removeprefix(f"{path}: ")) from None

    def _table(self, name: bytes):
        try:
            return self.env.open_db(name, create=False)
        except lmdb.Error:
            raise StoreError(f"an incomplete store: no {name.decode()} table") from None

    def _open(self) -> lmdb.Environment:
        if not os.path.isdir(self.path):
            raise StoreError("not a directory" if os.path.exists(self.path) else "no such directory")
        data_file = os.path.join(self.path, "data.mdb")
        if not os.path.exists(data_file) or os.path.getsize(data_file) == 0:
            raise StoreError("no ingest store here (no data.mdb)")
        try:
            # With LMDB's lock (lock.mdb): a running server sees this reader
            # and does not reuse the pages it reads.
            return open_readonly(self.path, lock=True)
        except lmdb.ReadonlyError:
            pass
        # lock.mdb is not ours to write (a store of another user, a
        # read-only mount): read without it, and only if no ingest process
        # has the store open. The directory's lock is held shared meanwhile
        # when its file is there (a reader may not create it).
        self._lock_fd = lock_directory(self.path, shared=True)
        try:
            return open_readonly(self.path, lock=False)
        except BaseException:
            self._unlock()
            raise

    def log_start(self, txn: lmdb.Transaction) -> int:
        """The oldest seq in the log, as Store.log_start."""
        return first_seq(txn, self.dbs)

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
