"""Server life: start, a tick loop, graceful shutdown.

start:    open the store, start the committer, listen.
tick:     twice a second refresh the clock and the Date header, close
          connections whose request or keep-alive time ran out.
shutdown: on SIGTERM/SIGINT stop listening, answer what is in flight
          after its commit (new requests get 503 shutting_down), close
          every connection, stop the committer, close the store, exit 0.
          SIGHUP is ignored (logged): there is nothing to reload.
          A store that closed under the server (store.StoreClosed) stops it
          the same way, with exit 1.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
import time
from email.utils import formatdate

import lmdb

from ingest import codes
from ingest.access import is_loopback
from ingest.app import App
from ingest.committer import Committer
from ingest.config import Config, ConfigError
from ingest.datadir import open_to_others
from ingest.metrics import Metrics
from ingest.protocol import HttpProtocol
from ingest.store import Store
from ingest.store_errors import StoreError, StoreFull
from ingest.tls import http_context, replication_contexts

log = logging.getLogger("ingest.server")

TICK_S = 0.5
# How often the store frees the reader slots of dead processes
# (Store.reader_check): a scan of the reader table and a lock test per
# reading process, while every second a killed export's slot stays, no page
# freed since its snapshot is reused and the store grows.
READER_CHECK_S = 2.0
# How long a stopping primary waits for its connected standbys to acknowledge
# its last entry (a healthy one takes milliseconds; a stalled one is not
# waited for past this).
STANDBY_FLUSH_S = 5.0


class StartError(Exception):
    """The server could not start: the store could not be opened or a listen
    failed. The text names which and why; `ingest serve` prints it as one
    line (the only place start-up failures are caught)."""


class Stopped(Exception):
    """The server stopped on a failure it cannot serve on (the store closed
    under it). Like StartError: one line, exit 1; a supervisor restarts it."""


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


async def _listen(what: str, host: str, port: int, start):
    """Await `start`, a listen; a failure names this listen, since a node may
    have two (HTTP and replication) and the operator must know which."""
    try:
        return await start
    except OSError as exc:
        raise StartError(f"cannot {what} on {host}:{port}: {_reason(exc)}") from exc


def check_role(config: Config, follow: str | None, replication_port: int | None) -> None:
    """Refuse a node that cannot keep its config's promise. In sync mode an
    answer waits for a standby; without a replication port none can follow,
    and the gate that makes answers wait is never installed, so every write
    would be acknowledged from one disk. A standby needs the port too: once
    promoted it is that primary (started without one and promoted, it
    acknowledged every write from one disk, and nothing said so)."""
    if config.replication.mode == "sync" and replication_port is None:
        role = "a primary" if follow is None else "a standby, once promoted,"
        raise ConfigError(f'config: replication.mode is "sync" but no --replication-port is given, so {role} '
                          'could serve no standby and nothing could be acknowledged on two disks: give '
                          '--replication-port, or set mode = "async"')


def check_access(config: Config, host: str) -> None:
    """Refuse to serve person data to a network with no access control: with
    no token every route is open, which only a loopback address keeps to
    this machine (or a proxy in front that authenticates, which the config
    must say)."""
    if not config.access.tokens and not config.access.open_on_network and not is_loopback(host):
        raise ConfigError(f"config: no [[access.tokens]], so every client that reaches {host} could read and write "
                          "person data: add tokens (`ingest token --name NAME --role ROLE` makes one), or set "
                          "access.open_on_network = true if an authenticating proxy stands in front")


class Server:
    def __init__(self, config: Config, data_dir: str, host: str = "127.0.0.1", port: int = 8080,
                 follow: str | None = None, replication_port: int | None = None):
        check_role(config, follow, replication_port)
        check_access(config, host)
        # Built before anything opens: a certificate that cannot be read is a ConfigError (exit 2).
        self.replication_tls = replication_contexts(config.replication)
        self.http_tls = http_context(config.http)
        self.config = config
        self.follow = follow
        self.replication_port = replication_port
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self.connections: set[HttpProtocol] = set()
        self.now = time.monotonic()
        self.date = formatdate(usegmt=True).encode()
        self.draining = False
        self._stop = None
        self._reader_check_at = self.now + READER_CHECK_S
        self.open_files_short: int | None = None  # set by run(): the open-files limit, when too low
        self.store: Store | None = None
        self.committer: Committer | None = None
        self.metrics: Metrics | None = None
        self.app: App | None = None

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        self.store = self._open_store()
        exposed = open_to_others(self.data_dir)
        if exposed:
            log.warning("the store is open to other users of this host: %s; it holds person codes: "
                        "chmod go= on them (docs/operations.md)", ", ".join(exposed))
        self.metrics = Metrics(
            codes.IMPLEMENTATION,
            connections=lambda: len(self.connections),
            store_sizes=self.store.sizes,
            last_seq=lambda: self.store.last_seq,
            # (collected once at registration too, before the app exists)
            replication=lambda: self.app.replication_gauges() if self.app is not None else {},
        )
        self.app = App(self.config, self.store, None, self.metrics)
        self.committer = Committer(self.store, self.app.apply, loop, self.config.limits.commit_events_max, self.metrics)
        self.app.committer = self.committer
        self.committer.start()
        try:
            listener = await self._open(loop)
        except BaseException:
            # A start that fails here (the API port taken, say) must end what
            # began: a follower reconnecting for ever kept the process alive,
            # holding the data directory, with no API and no error printed.
            await self._close_parts()
            raise
        self.port = listener.sockets[0].getsockname()[1]
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        # A logrotate postrotate or a closed terminal sends it; its default
        # ended the process at once, in-flight answers lost, without a word.
        loop.add_signal_handler(signal.SIGHUP, log.warning,
                                "SIGHUP: ignored (nothing to reload: the log is stderr); SIGTERM drains and stops")
        log.info(
            "serving on %s://%s:%d data=%s kernels=%s last_seq=%d role=%s",
            "https" if self.http_tls else "http", self.host, self.port, self.data_dir, codes.IMPLEMENTATION, self.store.last_seq, self.app.role,
        )
        if self.open_files_short is not None:
            log.warning("open files limit %d is below limits.connections_max (%d): connections beyond about %d are "
                        "reset unanswered; raise it (LimitNOFILE= in systemd, ulimit -n) or lower "
                        "limits.connections_max", self.open_files_short, self.config.limits.connections_max,
                        self.open_files_short - FILES_RESERVE)
        if not self.config.access.tokens and not self.config.access.open_on_network:
            # Loopback only (check_access), but a directory of mode 0700 does
            # not keep this port from the host's other users.
            log.warning("no [[access.tokens]]: every user and process on this host can read and write person "
                        "data through %s:%d; on a shared host add tokens (`ingest token`, docs/operations.md)",
                        self.host, self.port)
        tick = loop.create_task(self._tick())
        try:
            why = await self._stop
            log.info("%s: draining", signal.Signals(why).name if isinstance(why, int) else why)
        finally:
            listener.close()
            await self._drain()
            tick.cancel()
            await self._close_parts()
            log.info("stopped; last_seq=%d", self.store.last_seq)
        if isinstance(why, str):
            raise Stopped(why)

    async def _close_parts(self) -> None:
        if self.app.follower is not None:
            await self.app.follower.stop()
        if self.app.hub is not None:
            if self.app.role == "primary":
                # A planned switchover (stop, then promote the standby) must
                # find on the standby everything this node acknowledged.
                await self.app.hub.flushed(STANDBY_FLUSH_S)
            self.app.hub.close()
        self.committer.stop()
        self.store.close()

    async def _open(self, loop: asyncio.AbstractEventLoop) -> asyncio.AbstractServer:
        """The replication port, the follower, then the API port (last: no
        request may arrive before the node knows its role)."""
        if self.replication_port is not None:
            from ingest.replication.primary import Hub

            repl = self.config.replication
            gate = None
            if repl.mode == "sync":
                from ingest.replication.syncgate import SyncGate

                gate = SyncGate(repl.sync_timeout_s, repl.on_standby_lost)
                self.committer.gate = gate
                self.app.gate = gate
            hub = Hub(self.store, on_fence=self.app.fence,
                      on_ack=(lambda s: gate.on_ack(s.acked, self.store.last_seq)) if gate else (lambda s: None),
                      closed_to_standbys=lambda: "this node is a fenced former primary; follow the current primary"
                      if self.app.role == "fenced" else None)
            bound = await _listen("listen for replication", self.host, self.replication_port,
                                  hub.start(self.host, self.replication_port,
                                            self.replication_tls.server if self.replication_tls else None))
            self.app.hub = hub
            self.committer.on_commit = hub.notify
            log.info("replication listening on %s:%d (node %s, epoch %d, %s)", self.host, bound, self.store.node,
                     self.store.epoch, "mutual TLS" if self.replication_tls else "no TLS")
            if not self.replication_tls and not is_loopback(self.host):
                log.warning("the replication port %s:%d takes any peer without TLS: whoever reaches it can read "
                            "every record or fence this node; set replication.tls_* or keep the port on a private "
                            "network (docs/operations.md)", self.host, bound)
        tls_client = self.replication_tls.client if self.replication_tls else None
        if self.follow:
            from ingest.replication.standby import Follower

            host, _, port = self.follow.rpartition(":")
            self.store.mark_follows(self.follow)
            self.app.role = "standby"
            self.app.primary_address = self.follow
            self.app.follower = Follower(self.store, host, int(port), self.config.person_window_ms, tls_client)
            self.app.follower.start()
        elif self.app.role == "primary" and self.store.follows:
            # A standby's store started with a primary's command line (a unit
            # file, a mistake): at the same epoch as the primary it followed,
            # it would take writes beside it.
            self.app.role = "standby"
            self.app.primary_address = self.store.follows
            log.error("this store is a standby's (it followed %s): it takes no writes until promoted (`ingest "
                      "promote`); to go on following, start it with --follow %s", self.store.follows,
                      self.store.follows)
        if self.app.role == "primary" and self.app.hub is not None:
            if self.store.tell:
                self.app.tell_former_primary(tls_client)
            elif self.store.last_seq:
                from ingest.replication.standby import FORMER_PRIMARY_WAIT_S

                # A primary replaced while it was down hears of the higher
                # epoch from the promoted node within this, before any write.
                await asyncio.sleep(FORMER_PRIMARY_WAIT_S)
        listener = await _listen("serve", self.host, self.port, loop.create_server(
            lambda: HttpProtocol(self), self.host, self.port, backlog=4096, reuse_address=True,
            # A handshake is bounded like a request (slowloris guard).
            ssl=self.http_tls, ssl_handshake_timeout=self.config.limits.request_seconds_max if self.http_tls else None,
        ))
        return listener

    def _open_store(self) -> Store:
        st = self.config.store
        try:
            return Store(self.data_dir, st.map_bytes_initial, st.map_bytes_max, self.config.stats.time_zone,
                         self.config.replication.log_keep_entries)
        # OSError: the path is a file, or not ours to create or list; lmdb:
        # not ours to write (ReadonlyError) or not a store; StoreError: a
        # store of another format; StoreFull: no disk for the initial map.
        except (OSError, lmdb.Error, StoreError, StoreFull) as exc:
            # lmdb's text starts with the path; said once is enough.
            reason = _reason(exc).removeprefix(f"{self.data_dir}: ")
            raise StartError(f"cannot open the store in {self.data_dir}: {reason}") from exc

    def _on_signal(self, sig: int) -> None:
        if not self._stop.done():
            self._stop.set_result(sig)

    def _fail(self, why: str) -> None:
        if not self._stop.done():
            log.error("stopping: %s", why)
            self._stop.set_result(why)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self._tick_once()
            except Exception:
                # The tick keeps every timeout (sync gate, idle connections,
                # replication pings): one failure must not end it for good.
                log.exception("server tick failed")

    def _tick_once(self) -> None:
        limits = self.config.limits
        self.now = time.monotonic()
        self.date = formatdate(usegmt=True).encode()
        if self.store.closed_because:
            # Serving on would answer every request with a store error; a
            # restart opens the data file that is there.
            self._fail(f"the store in {self.data_dir} {self.store.closed_because}; restart the node")
            return
        if self.now >= self._reader_check_at:
            self._reader_check_at = self.now + READER_CHECK_S
            self.store.reader_check()
        if self.committer is not None and self.committer.gate is not None:
            self.committer.gate.check(self.now)
        if self.app.hub is not None:
            self.app.hub.ping()
        for conn in list(self.connections):
            conn.idle_check(self.now, limits.request_seconds_max, limits.keepalive_seconds_max)

    async def _drain(self) -> None:
        self.draining = True
        self.app.draining = True
        deadline = time.monotonic() + self.config.limits.drain_seconds_max
        # Idle connections go now; busy ones close after their last answer
        # (answers written while draining carry Connection: close). A request
        # still arriving is busy too: it gets its 503 shutting_down, which
        # tells the client to go elsewhere, where an EOF would look like a
        # network fault (a stalled one meets request_seconds_max's 408).
        while time.monotonic() < deadline:
            for conn in list(self.connections):
                if not conn.pending and not conn.parser.in_request:
                    conn.close()
            if not self.connections and self.committer.in_flight == 0:
                break
            await asyncio.sleep(0.02)
        else:
            log.warning(
                "drain timed out with %d connections and %d events in flight",
                len(self.connections), self.committer.in_flight,
            )
        for conn in list(self.connections):
            conn.close()


# Descriptors beyond the connections: the store (environment, lock, data
# file), standby sessions, a snapshot's files, the log, the executors.
FILES_RESERVE = 100


def raise_open_files(connections_max: int) -> int | None:
    """Lift the soft limit on open files to the hard one (systemd's default
    soft limit is 1024; limits.connections_max 20,000). Returns the limit
    when even that cannot hold connections_max connections, None when it
    can: past it new connections are reset without an answer or a line."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections_max + FILES_RESERVE
    target = hard if hard != resource.RLIM_INFINITY else max(soft, want)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY and soft < connections_max else None


def tune_gc() -> None:
    """Keep the cycle collector off the request path.

    Everything alive after start-up lives as long as the process: keep it
    out of every collection. Per-request garbage is acyclic and freed by
    reference counting, so the collector may run far less often than its
    default of every 700 allocations; at that default it cost 13-15% of the
    instructions per event (docs/benchmarks.md, "The cycle collector").
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def run(config: Config, data_dir: str, host: str, port: int, follow: str | None = None,
        replication_port: int | None = None) -> None:
    import uvloop

    server = Server(config, data_dir, host, port, follow, replication_port)  # ConfigError before anything opens
    server.open_files_short = raise_open_files(config.limits.connections_max)
    tune_gc()
    uvloop.run(server.serve())
