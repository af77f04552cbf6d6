"""The primary's side of replication: a listener for standbys, one session
per standby, streaming the change log from where the standby stands.

Only moves bytes: the conversation is ingest.replication.protocol.Primary.
After every group commit the server calls `Hub.notify()`, and each session
sends what its standby does not have yet, as long as the socket takes it.

A standby whose next entry is no longer in the retained log (the store's
`log_keep`) gets a snapshot instead: LMDB's hot copy, made on a Hub thread
into a temporary file in the data directory while ingest goes on, sent in
chunks as the socket drains, then the entries after it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ingest.logthrottle import Throttled
from ingest.replication import protocol
from ingest.store import SNAPSHOT_OUT_PREFIX, Store
from ingest.tls import HANDSHAKE_TIMEOUT_S

log = logging.getLogger("ingest.replication")

# Entries read from the log per frame; frames stay well under the wire limit.
ENTRIES_PER_FRAME = 1000
# Snapshot bytes per frame: well under the 8 MiB frame limit, and large
# enough that the per-frame cost (a thread hop to read it) stays small.
SNAPSHOT_CHUNK_BYTES = 1 << 20
# The port is open to whoever reaches it (keep it private: operations.md):
# a peer has this long to say hello, ...
HELLO_TIMEOUT_S = 5.0
# ... a session whose peer takes no bytes for this long is closed (a stalled
# peer would otherwise pin its snapshot file in the data directory; a real
# standby reconnects once it reads again) ...
STALLED_S = 30.0
# ... and beyond this many sessions at once new connections are refused.
SESSIONS_MAX = 8


class Session(asyncio.Protocol):
    def __init__(self, hub: "Hub"):
        self.hub = hub
        self.transport: asyncio.Transport | None = None
        self.proto = protocol.Primary(hub.store.node, hub.store.epoch)
        self.peer = ""
        self.node = ""
        self.cursor = -1  # last seq sent; -1 until the standby said hello
        self.acked = 0
        # The last time the standby was known to have everything: at its
        # hello or an ACK of our last seq (until then, the session's start).
        # lag_seconds counts from it when the log no longer holds the first
        # entry the standby lacks.
        self.caught_up_at = time.time()
        self._paused = False
        self._paused_since = 0.0  # time.monotonic() when writing paused
        self._opened_at = time.monotonic()  # again at connection_made: after a TLS handshake
        # The conversation is over (a refusal, a bad frame): what is queued
        # still goes out, nothing more does, and the session has left the hub.
        self.ended = False
        self._writable = asyncio.Event()
        self._writable.set()
        self.snapshot: dict | None = None  # a snapshot under way: its seq and bytes sent
        self._snapshot_task: asyncio.Task | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        # With TLS this runs after the handshake, which has its own limit:
        # the time to say hello counts from here, as the docs say.
        self._opened_at = time.monotonic()
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = f"{host}:{port}"
        if len(self.hub.sessions) >= SESSIONS_MAX:
            self.hub.log_busy(logging.WARNING, "replication connection from %s refused: %d sessions already",
                              self.peer, SESSIONS_MAX)
            transport.write(self.proto.refuse("busy", f"this primary serves at most {SESSIONS_MAX} sessions"))
            self.ended = True
            transport.close()
            return
        self.hub.sessions.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.sessions.discard(self)
        self.transport = None
        self._writable.set()  # a snapshot waiting to send sees the end and stops
        # A connection that never said hello (a port scan, a load
        # balancer's health check) is no standby: not worth a line each.
        log.log(logging.INFO if self.node else logging.DEBUG, "standby %s (%s) disconnected", self.node or "?",
                self.peer)

    def data_received(self, data: bytes) -> None:
        if self.ended:
            return
        self._act(self.proto.receive(data))

    def _act(self, actions: list) -> None:
        for i, action in enumerate(actions):
            if self.ended:
                return
            kind = type(action)
            if kind is protocol.Send:
                self.transport.write(action.data)
            elif kind is protocol.Hello:
                self._hello(action)
            elif kind is protocol.Acked:
                self.acked = action.seq
                if self.acked >= self.hub.store.last_seq:
                    self.caught_up_at = time.time()
                self.hub.on_ack(self)
            elif kind is protocol.Fence:
                # What follows (a stale_primary refusal) tells the promoted
                # node that we know its epoch, and it stops telling us. So it
                # goes out only once the fence is on disk: killed before
                # that, this node would restart as a primary no one tells.
                rest = actions[i + 1:]
                self.hub.on_fence(action.epoch).add_done_callback(lambda stored: self._fenced(stored, rest))
                return
            elif kind is protocol.Close:
                log.warning("closing replication to %s: %s: %s", self.peer, action.code, action.message)
                self.end()
                return

    def _fenced(self, stored: asyncio.Future, rest: list) -> None:
        if self.gone:
            return
        if stored.cancelled() or stored.exception() is not None or not stored.result():
            # No refusal: the promoted node keeps telling, and each hello is
            # another try at storing the fence.
            self.end(abort=True)
            return
        self._act(rest)

    @property
    def gone(self) -> bool:
        """Nothing more may be written to this peer."""
        return self.transport is None or self.ended

    def end(self, abort: bool = False) -> None:
        """Nothing more goes to this peer: it leaves the hub now, not when
        its queued bytes have drained (a closed protocol would otherwise be
        pumped and pinged, and raise, meanwhile)."""
        self.ended = True
        self.hub.sessions.discard(self)
        self._writable.set()  # a snapshot waiting to send sees the end and stops
        if self.transport is None:
            return
        if abort:
            self.transport.abort()
        else:
            self.transport.close()

    def _hello(self, hello: protocol.Hello) -> None:
        store = self.hub.store
        closed = self.hub.closed_to_standbys()
        if closed is not None:
            log.error("refusing standby %s (%s): fenced: %s", hello.node, self.peer, closed)
            self.transport.write(self.proto.refuse("fenced", closed))
            self.end()
            return
        tip_here = store.tip(hello.last_seq)
        refusal = protocol.history_refusal(hello, store.epoch, store.last_seq, tip_here, store.time_zone)
        if refusal is not None:
            log.error("refusing standby %s (%s): %s: %s", hello.node, self.peer, *refusal)
            self.transport.write(self.proto.refuse(*refusal))
            self.end()
            return
        if hello.last_seq and not hello.tip:
            log.warning("standby %s (%s) sent no tip (an older version): its log at seq %d cannot be checked "
                        "against ours", hello.node, self.peer, hello.last_seq)
        self.node = hello.node
        self.cursor = hello.last_seq
        self.acked = hello.last_seq
        if hello.last_seq >= store.last_seq:
            self.caught_up_at = time.time()
        log.info("standby %s (%s) follows from seq %d", hello.node, self.peer, hello.last_seq)
        self.transport.write(self.proto.welcome(store.last_seq))
        if hello.last_seq == 0 or (hello.tip and tip_here is not None):
            # Its log is a prefix of ours up to last_seq (history_refusal
            # compared the digests), durably on its disk: as good as an ACK of
            # it. After a reconnect (a primary restart, a lost ACK) no ACK may
            # come until the next write, and answers waiting at the sync gate
            # for what it already has would wait for that write. A peer that
            # sent no tip was not checked: its first ACK counts.
            self.hub.on_ack(self)
        self.pump()

    def pump(self) -> None:
        store = self.hub.store
        while (not self.gone and not self._paused and self.snapshot is None
               and 0 <= self.cursor < store.last_seq):
            entries = store.log_raw(self.cursor, ENTRIES_PER_FRAME)
            if not entries or entries[0][0] != self.cursor + 1:
                # What it needs next was trimmed (before it came, or while it
                # lagged): the log cannot bring it up to date any more.
                self._start_snapshot()
                return
            self.transport.write(self.proto.entries(entries))
            self.cursor = entries[-1][0]

    def _start_snapshot(self) -> None:
        store = self.hub.store
        log.warning("standby %s (%s) needs seq %d, the log starts at %d: sending a snapshot",
                    self.node, self.peer, self.cursor + 1, store.log_start)
        self.snapshot = {"last_seq": None, "bytes_sent": 0, "bytes_total": None}
        # Held by the session: the loop keeps only a weak reference to a task.
        self._snapshot_task = asyncio.get_running_loop().create_task(self._send_snapshot())

    async def _send_snapshot(self) -> None:
        # A lost connection is noticed at each step. The task itself is only
        # cancelled when the loop ends (shutdown), maybe mid-copy: see below.
        store = self.hub.store
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        fd, path = tempfile.mkstemp(prefix=SNAPSHOT_OUT_PREFIX, suffix=".mdb", dir=store.path)
        f = os.fdopen(fd, "rb")
        copy = self.hub.pool.submit(store.snapshot, fd)
        try:
            try:
                last_seq = await asyncio.wrap_future(copy)
            except BaseException:
                # The copy writes through this descriptor on its own thread.
                # Closed under it (this task is cancelled when the loop ends
                # at shutdown), its number would go to the next file opened,
                # which would receive the rest of the copy: the file closes
                # when the copy is done (at once if it is).
                copy.add_done_callback(lambda _: f.close())
                raise
            with f:
                size = os.fstat(f.fileno()).st_size
                f.seek(0)  # the copy wrote through the same descriptor
                if self.gone:
                    return
                self.snapshot.update(last_seq=last_seq, bytes_total=size)
                log.info("snapshot for %s: %d bytes at seq %d, copied in %.1fs", self.node, size, last_seq,
                         time.monotonic() - started)
                self.transport.write(self.proto.snapshot_begin(last_seq, size))
                while True:
                    await self._writable.wait()
                    if self.gone:
                        return
                    data = await loop.run_in_executor(self.hub.pool, f.read, SNAPSHOT_CHUNK_BYTES)
                    if self.gone:
                        return
                    if not data:
                        break
                    self.transport.write(self.proto.snapshot_chunk(data))
                    self.snapshot["bytes_sent"] += len(data)
                self.transport.write(self.proto.snapshot_end())
            log.info("snapshot sent to %s: %d bytes at seq %d in %.1fs; streaming from there", self.node, size,
                     last_seq, time.monotonic() - started)
            self.cursor = last_seq
            self.snapshot = None
            self.pump()
        except Exception:
            log.exception("snapshot for %s (%s) failed; closing its connection", self.node, self.peer)
            self.end()
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def ping(self) -> None:
        """Every tick: drop a peer that never said hello or stopped reading;
        otherwise say where we are (silence would look like a dead link to
        the standby, which reconnects after STANDBY_READ_TIMEOUT_S)."""
        if self.gone:
            return
        now = time.monotonic()
        if self.cursor < 0 and now - self._opened_at > HELLO_TIMEOUT_S:
            log.warning("replication connection from %s closed: no hello within %gs", self.peer, HELLO_TIMEOUT_S)
            self.end(abort=True)
        elif self._paused and now - self._paused_since > STALLED_S:
            log.warning("standby %s (%s) took nothing for %gs: closing its session", self.node or "?", self.peer,
                        STALLED_S)
            self.end(abort=True)
        elif self.cursor >= 0 and not self._paused:
            self.transport.write(self.proto.ping(self.hub.store.last_seq))

    def pause_writing(self) -> None:
        if not self._paused:
            self._paused_since = time.monotonic()
        self._paused = True
        self._writable.clear()

    def resume_writing(self) -> None:
        self._paused = False
        self._writable.set()
        self.pump()

    def lag_seconds(self) -> float:
        """How long the standby has missed something it still misses: since
        the commit of the first entry it lacks (the entry's `at_ms`, one read
        per status), or, when the log no longer holds that entry, since it
        was last known to have everything."""
        store = self.hub.store
        if self.acked >= store.last_seq:
            return 0.0
        since = self.caught_up_at
        first = store.log(self.acked, 1)
        if first and first[0][0] == self.acked + 1 and first[0][1].at_ms:
            since = first[0][1].at_ms / 1000
        return round(max(time.time() - since, 0.0), 3)

    def status(self) -> dict:
        return {"node": self.node, "peer": self.peer, "sent_seq": max(self.cursor, 0), "acked_seq": self.acked,
                "lag_events": self.hub.store.last_seq - self.acked, "lag_seconds": self.lag_seconds(),
                "snapshot": self.snapshot}


class Hub:
    def __init__(self, store: Store, on_fence: Callable[[int], asyncio.Future], on_ack: Callable[[Session], None],
                 closed_to_standbys: Callable[[], str | None] = lambda: None):
        self.store = store
        self.sessions: set[Session] = set()
        self.log_busy = Throttled(log)  # anyone may open connections to this port
        self.on_fence = on_fence
        self.on_ack = on_ack
        # Why no standby may follow this node now (a fenced former primary:
        # its history ends, and its tail is one the new primary may lack),
        # or None. A refused standby retries: the node may be promoted again.
        self.closed_to_standbys = closed_to_standbys
        self._server: asyncio.AbstractServer | None = None
        # Hot copies and their reads: off the loop, and not on the default
        # executor, which promotion and others share.
        self.pool = ThreadPoolExecutor(2, thread_name_prefix="ingest-snapshot")

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Listen for standbys; with `tls` (ingest/tls.py), only over
        mutual TLS."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Session(self), host, port, reuse_address=True, ssl=tls,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if tls else None)
        return self._server.sockets[0].getsockname()[1]

    def notify(self) -> None:
        """New entries were committed: send them on."""
        self._each(lambda session: session.pump())

    def ping(self) -> None:
        """Called on every server tick."""
        self._each(lambda session: session.ping())

    def _each(self, step: Callable[[Session], None]) -> None:
        # One session's failure (a bug, a state we did not foresee) ends that
        # session, not the others' streams nor the caller (the server's tick,
        # the commit's callback).
        for session in list(self.sessions):
            try:
                step(session)
            except Exception:
                log.exception("replication to %s (%s) failed; closing its session", session.node or "?",
                              session.peer)
                session.end(abort=True)

    def restart_sessions(self) -> None:
        """This node's epoch rose (a promotion): the standbys it serves were
        welcomed at the old one and would stream at it for as long as they
        stay connected. They are dropped; each says hello again and adopts
        the new epoch (otherwise one of them, promoted later, could reach the
        same epoch as this node with another history)."""
        for session in list(self.sessions):
            session.end(abort=True)

    async def flushed(self, timeout_s: float) -> None:
        """Wait, at most timeout_s, until every streaming standby has
        acknowledged the store's last entry; say which did not."""
        deadline = time.monotonic() + timeout_s
        behind = self._behind()
        while behind and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            behind = self._behind()
        for session in behind:
            log.warning("stopping with standby %s (%s) at seq %d of %d: after a switchover to it, replay the rest "
                        "with `ingest tail --after %d`", session.node or "?", session.peer, session.acked,
                        self.store.last_seq, session.acked)

    def _behind(self) -> list[Session]:
        last = self.store.last_seq
        return [s for s in self.sessions if s.cursor >= 0 and not s.ended and s.acked < last]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()
        # A copy still running ends with the store's close; its file is
        # removed at the next open if not before.
        self.pool.shutdown(wait=False, cancel_futures=True)

    def status(self) -> list[dict]:
        return [s.status() for s in self.sessions if s.cursor >= 0]
