"""The standby's side of replication: follow a primary, apply its change log
in order in the local store, acknowledge what is durable, reconnect when the
connection breaks.

Only moves bytes: the conversation is ingest.replication.protocol.Standby.
Entries are applied on one writer thread (the store has one writer), each
received frame in one durable transaction, with the same apply functions the
primary used (ingest.changelog), so the two stores hold the same state.
"""
from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ingest.datadir import FILE_MODE
from ingest.replication import protocol, wire
from ingest.store import SNAPSHOT_IN, Store
from ingest.store_errors import LogRefused, StoreClosed
from ingest.tls import HANDSHAKE_TIMEOUT_S

log = logging.getLogger("ingest.replication")

RECONNECT_S = (0.1, 0.2, 0.5, 1.0, 2.0)
# The primary pings every tick (0.5 s); this long without any frame means the
# link is dead even if no FIN ever arrives (a cut in between, a stalled proxy).
READ_TIMEOUT_S = 5.0
# A connect to a host that drops SYNs would otherwise wait for the kernel's
# own timeout (minutes), with the status saying nothing.
CONNECT_TIMEOUT_S = 5.0
# What an operator does next, after the standby's log line of a final refusal.
NEXT_STEP = {
    "ahead": ": this store holds entries the primary never had (a former primary's unreplicated tail): write "
             "them out with `ingest tail --data DIR --after <the primary's last_seq>`, then start this node with an "
             "empty data directory",
    "diverged": ": this store's history forked from the primary's (a former primary's unreplicated tail): write "
                "it out with `ingest tail`, then start this node with an empty data directory",
}
# Refusals after which trying again cannot help: an operator must act.
FATAL = {"self", "stale_primary", "ahead", "diverged", "unverifiable", "gap", "epoch_changed", "refused",
         "store_closed", "time_zone"}


async def _connect(host: str, port: int, tls: ssl.SSLContext | None):
    return await asyncio.wait_for(asyncio.open_connection(
        host, port, ssl=tls, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if tls else None), CONNECT_TIMEOUT_S)


async def tell_promoted(host: str, port: int, store: Store, tls: ssl.SSLContext | None = None) -> bool:
    """Best effort, after a promotion: say hello to the primary this node
    followed, at the new epoch. If that primary is still alive (a partition,
    or a promotion made too early) it learns of the higher epoch and fences
    itself at once, instead of taking writes that the new history will not
    have. True once its answer shows it knows the epoch; False when it
    could not be reached (the usual case: it is dead) or did not say so."""
    hello = protocol.Standby(store.node, store.epoch, store.last_seq).hello()
    try:
        reader, writer = await _connect(host, port, tls)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(hello)
        await asyncio.wait_for(writer.drain(), CONNECT_TIMEOUT_S)
        return _knows_epoch(await asyncio.wait_for(reader.read(1 << 16), CONNECT_TIMEOUT_S), store.epoch)
    except (OSError, asyncio.TimeoutError):
        return False
    finally:
        writer.close()


def _knows_epoch(answer: bytes, epoch: int) -> bool:
    """Whether a node's answer to our hello shows that it knows `epoch`: it
    refused us as `stale_primary` (it fenced itself, durably), or it speaks
    at that epoch already (it follows this history, or a later one)."""
    try:
        return any(frame.epoch >= epoch or (frame.type == wire.Type.REFUSE
                                            and wire.decode_refuse(frame.payload).code == "stale_primary")
                   for frame in wire.FrameDecoder().feed(answer))
    except wire.WireError:
        return False


# How often a promoted node tells the primary it followed of its epoch, for
# as long as it is the primary and that one has not answered (see
# keep_telling_promoted): a former primary restarted with its usual command
# line waits longer than this before it takes writes (FORMER_PRIMARY_WAIT_S),
# so that it hears of the epoch first. When the tries slowed to one every
# 2 s after the first minute, such a primary acknowledged 1380 writes in
# 0.85 s (a reviewer's measurement) that the new primary never had. A try at a dead address costs a refused
# connection or a timeout: nothing.
TELL_PROMOTED_EVERY_S = 0.1
# How long a node that starts as a primary, with a history and a replication
# port, listens there before it opens its API port: a promoted node telling
# it of a higher epoch is heard within this, and it comes up fenced.
FORMER_PRIMARY_WAIT_S = 5 * TELL_PROMOTED_EVERY_S


async def keep_telling_promoted(host: str, port: int, store: Store, is_primary: Callable[[], bool],
                                tls: ssl.SSLContext | None = None) -> None:
    """After a promotion: tell the former primary of the new epoch, and keep
    trying while this node is the primary until it answers that it knows.
    Once is not enough: a primary behind a partition that heals later would
    take writes beside this one. After it knows, nothing more is sent (and
    the store forgets whom to tell): its fence is stored, and a node rejoined
    as a standby would only log a refusal of every hello."""
    loop = asyncio.get_running_loop()
    while is_primary():
        if await tell_promoted(host, port, store, tls):
            log.warning("told the former primary %s:%d of epoch %d: it stops taking writes", host, port,
                        store.epoch)
            try:
                await loop.run_in_executor(None, store.told)
            except Exception:  # the next start tells it again: it answers at once that it knows
                log.exception("could not store that %s:%d knows epoch %d", host, port, store.epoch)
            return
        await asyncio.sleep(TELL_PROMOTED_EVERY_S)


class Follower:
    def __init__(self, store: Store, host: str, port: int, window_ms: int, tls: ssl.SSLContext | None = None):
        self.store = store
        self.host = host
        self.port = port
        self.tls = tls  # tls.py: the client context of the pair's mutual TLS
        self.window_ms = window_ms
        self.connected = False
        self.primary_last_seq = 0
        # Whether the primary has said where it is (a WELCOME): until then the
        # lag is unknown, not zero (refused at once, the node never hears it).
        self.welcomed = False
        self.applied_at = 0.0
        # When this standby last had everything the primary had: lag in time.
        self.caught_up_at = time.time()
        self.stopped_because = ""
        self.snapshot: dict | None = None  # a snapshot being received: its seq and bytes
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="ingest-standby-writer")
        self._task: asyncio.Task | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop following; returns once no apply is running.

        One cancel is not enough on Python 3.11: asyncio.wait_for swallows a
        cancellation that lands as its inner read completes (fixed in 3.12),
        and promotion would then wait for ever. So a flag the loop checks,
        and cancels until the task is really done."""
        self._stopping = True
        task = self._task
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=0.5)
        # The writer thread runs its jobs in order: once this no-op has run,
        # no apply is running or queued. (Not shutdown(wait=True) on the
        # default executor: one thread fewer to join at the loop's end.)
        await asyncio.get_running_loop().run_in_executor(self._writer_thread, _nothing)
        self._writer_thread.shutdown(wait=False)
        self.connected = False

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                code = await self._follow_once()
            except (OSError, asyncio.IncompleteReadError) as exc:
                code = f"connection: {exc}"
            except StoreClosed as exc:
                log.error("%s", exc)  # the server stops on it
                code = "store_closed"
            except Exception as exc:
                # Anything else (a store error while applying, a bug) must not
                # end this task: a dead task used to leave the status saying
                # "connected" for ever while nothing was applied any more.
                log.exception("replication from %s:%d failed", self.host, self.port)
                code = f"error: {exc!r}"
            else:
                attempt = 0 if self.connected else attempt
            self.connected = False
            if code in FATAL:
                self.stopped_because = code
                log.error("standby stopped following %s:%d: %s%s", self.host, self.port, code, NEXT_STEP.get(code, ""))
                return
            delay = RECONNECT_S[min(attempt, len(RECONNECT_S) - 1)]
            attempt += 1
            log.warning("replication from %s:%d: %s; reconnecting in %.1fs", self.host, self.port, code, delay)
            await asyncio.sleep(delay)

    async def _follow_once(self) -> str:
        loop = asyncio.get_running_loop()
        try:
            reader, writer = await _connect(self.host, self.port, self.tls)
        except asyncio.TimeoutError:
            return f"no connection within {CONNECT_TIMEOUT_S:g}s"
        store = self.store
        proto = protocol.Standby(store.node, store.epoch, store.last_seq, store.tip(store.last_seq) or b"",
                                 store.time_zone)
        incoming = None  # the snapshot file being received, if any
        try:
            writer.write(proto.hello())
            while not self._stopping:
                try:
                    data = await asyncio.wait_for(reader.read(1 << 16), READ_TIMEOUT_S)
                except asyncio.TimeoutError:
                    return f"nothing from the primary for {READ_TIMEOUT_S:g}s"
                if not data:
                    return "primary closed the connection"
                for action in proto.receive(data):
                    kind = type(action)
                    if kind is protocol.Send:
                        if not _send(writer, action.data):
                            return "connection lost"
                    elif kind is protocol.Welcomed:
                        if action.epoch > store.epoch:
                            await loop.run_in_executor(self._writer_thread, store.set_epoch, action.epoch)
                        self.connected = True
                        self.welcomed = True
                        self.primary_last_seq = action.last_seq
                        log.info("following %s (epoch %d) from seq %d", action.node, action.epoch, store.last_seq)
                    elif kind is protocol.Apply:
                        try:
                            seq = await loop.run_in_executor(
                                self._writer_thread, store.apply_log, action.entries, self.window_ms)
                        except LogRefused as exc:
                            # Retrying would meet the same rules: final, until
                            # the settings agree and the node is restarted.
                            log.error("%s", exc)
                            return "refused"
                        self.primary_last_seq = max(self.primary_last_seq, action.primary_last_seq)
                        self.applied_at = time.time()
                        if seq >= self.primary_last_seq:
                            self.caught_up_at = self.applied_at
                        # The link may have died while the entries were
                        # applied (a cut, a reset): then there is no one to
                        # ACK, and the next HELLO says where we stand.
                        if not _send(writer, proto.ack(seq)):
                            return "connection lost while applying"
                    elif kind is protocol.SnapshotBegin:
                        incoming = await loop.run_in_executor(self._writer_thread, self._incoming)
                        self.snapshot = {"last_seq": action.last_seq, "bytes_received": 0,
                                         "bytes_total": action.size}
                        log.warning("receiving a snapshot of %d bytes at seq %d (this node is at seq %d, "
                                    "behind the primary's retained log)", action.size, action.last_seq,
                                    store.last_seq)
                    elif kind is protocol.SnapshotChunk:
                        await loop.run_in_executor(self._writer_thread, incoming.write, action.data)
                        self.snapshot["bytes_received"] += len(action.data)
                    elif kind is protocol.SnapshotEnd:
                        await loop.run_in_executor(self._writer_thread, self._install, incoming, action)
                        incoming = None
                        self.snapshot = None
                        log.warning("installed the snapshot: now at seq %d", store.last_seq)
                        if not _send(writer, proto.ack(store.last_seq)):
                            return "connection lost after the snapshot"
                    elif kind is protocol.Fence:
                        await loop.run_in_executor(self._writer_thread, store.fence, action.epoch)
                        log.warning("epoch %d exists and its primary does not take this node: fenced (restarted "
                                    "without --follow it takes no writes)", action.epoch)
                    elif kind is protocol.Close:
                        # The code decides what happens next; the message is
                        # what an operator reading this node's log needs.
                        log.warning("replication from %s:%d closed: %s: %s%s", self.host, self.port, action.code,
                                    action.message, " (an HTTP port? --follow takes the primary's --replication-port)"
                                    if action.code == "bad_magic" and data.startswith(b"HTTP") else "")
                        return action.code
                if proto.primary_last_seq:
                    self.primary_last_seq = max(self.primary_last_seq, proto.primary_last_seq)
                if self.primary_last_seq <= store.last_seq:
                    self.caught_up_at = time.time()
            return "stopping"
        finally:
            writer.close()
            if incoming is not None:  # cut mid-snapshot: nothing was installed
                self.snapshot = None
                await loop.run_in_executor(self._writer_thread, self._discard, incoming)

    def _incoming(self):
        """A fresh file for a snapshot (writer thread). A fixed name: what a
        killed process left of one is simply overwritten (or removed at open)."""
        return open(os.path.join(self.store.path, SNAPSHOT_IN), "wb", opener=_private)

    def _install(self, incoming, end: protocol.SnapshotEnd) -> None:
        incoming.flush()
        os.fsync(incoming.fileno())
        incoming.close()
        self.store.install_snapshot(incoming.name, end.last_seq, end.size, end.sha256)

    @staticmethod
    def _discard(incoming) -> None:
        incoming.close()
        try:
            os.unlink(incoming.name)
        except FileNotFoundError:
            pass

    def status(self) -> dict:
        alive = self._task is not None and not self._task.done()
        known = self.welcomed
        return {
            "primary": f"{self.host}:{self.port}",
            "connected": self.connected and alive,
            "primary_last_seq": self.primary_last_seq if known else None,
            "lag_events": max(self.primary_last_seq - self.store.last_seq, 0) if known else None,
            "lag_seconds": None if not known else 0.0 if self.primary_last_seq <= self.store.last_seq
            else round(time.time() - self.caught_up_at, 3),
            "stopped_because": self.stopped_because or None,
            "snapshot": self.snapshot,
        }


def _send(writer: asyncio.StreamWriter, data: bytes) -> bool:
    """Write unless the connection is gone; False if it is.

    uvloop raises RuntimeError on a write to a transport whose connection
    was lost (the stdlib loop silently drops it): while an apply runs on the
    writer thread, a reset can close the transport under us."""
    if writer.transport.is_closing():
        return False
    if data:
        writer.write(data)
    return True


def _nothing() -> None:
    pass


def _private(path: str, flags: int) -> int:
    """Open a snapshot's file for this user alone: it becomes data.mdb, the
    person data, whatever mode a leftover of a killed process had."""
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd
