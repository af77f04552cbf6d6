"""The two nodes of `ingest drill`: on this machine, or on real hosts.

The drill (ingest/drill.py) takes the same steps either way; only how a node
is set up, started, killed, read and wiped differs, behind the same methods:

- LocalNode: a child process of the drill, its data and log in the drill's
  work directory, loopback ports.
- RemoteNode: every operation is one shell command run on the node's host
  through a template such as `ssh {host} {command}`; the server runs there
  detached, its pid in a file, so that the drill SIGKILLs exactly that
  process. HTTP calls (status, promote) go straight to the host.

A node counts as started only when GET /v1/status answers with the node id
in the node's own store, read while its process still runs: another server
on the port (a stranger, one left behind) would otherwise pass for it and
take the drill's writes.
"""
from __future__ import annotations

import http.client
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import lmdb

from ingest.cli import urlopen
from ingest.datadir import StoreReader
from ingest.keys import NODE
from ingest.store_errors import StoreError
from ingest.tail import TailIncomplete, requests_after

SNAPSHOT_INSTALLED = "installed the snapshot"
SYNC_DEGRADED = "SYNC REPLICATION DEGRADED"  # a sync primary answers without its standby
START_TIMEOUT_S = 30.0
# One remote command: an ssh handshake plus, at most, the 30 s a stop waits.
REMOTE_TIMEOUT_S = 60.0
DEFAULT_REMOTE = "ssh -o BatchMode=yes {host} {command}"
# store_node() on a host, by its Python (`--python`): stdout is the node id,
# or nothing. StoreReader, as `ingest tail` there, so that a host's ingest
# older than this module runs it too.
STORE_NODE_PY = """import sys
from ingest.datadir import StoreReader
from ingest.keys import NODE
reader = StoreReader(sys.argv[1])
with reader.env.begin(db=reader.dbs[b"meta"], buffers=False) as txn:
    print((txn.get(NODE) or b"").decode())
"""


def store_node(data: str) -> str:
    """The node id in the store at `data`; "" while there is none (its
    server has not made the store yet). Read-only, beside the running server
    as `ingest export` reads."""
    try:
        reader = StoreReader(data)
    except StoreError:
        return ""
    try:
        with reader.env.begin(db=reader.dbs[b"meta"], buffers=False) as txn:
            raw = txn.get(NODE)
    except lmdb.Error:
        return ""
    finally:
        reader.close()
    return raw.decode() if raw else ""


class _Http:
    """What every node answers over HTTP."""

    name: str
    address: str
    http_port: int
    log_where: str  # the server's log, for an operator: a path here, or HOST:PATH
    token: str | None = None  # an admin token, when the nodes' config has access control
    started = False  # whether start() ran: a server of this drill may be running

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://{self.address}/v1/status", timeout=5) as r:
            return json.loads(r.read())

    def promote(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(f"http://{self.address}/v1/admin/promote", data=b"{}", method="POST",
                                     headers=headers)
        with urlopen(req, timeout=30) as r:  # never to where a redirect points, with the token
            return json.loads(r.read())

    def _answered_node(self) -> str | None:
        """The node id GET /v1/status answers with; "" for an answer that
        names none (not an ingest server), None when nothing answers."""
        try:
            node = self.status().get("node")
        except urllib.error.HTTPError:
            return ""  # ours answers its status 200: an error page is another server's
        except (OSError, http.client.HTTPException):
            return None
        except (ValueError, AttributeError):  # not JSON, not an object
            return ""
        return node if isinstance(node, str) else ""

    def _wait_serving(self, check_every: int) -> None:
        """Until GET /v1/status answers from the server start() ran: with
        the node id of the node's own store, that server still running
        (_own_node). It is asked on every answer and every `check_every`
        polls without one: on a host it is a round trip."""
        deadline = time.monotonic() + START_TIMEOUT_S
        polls = 0
        while time.monotonic() < deadline:
            polls += 1
            answered = self._answered_node()
            if answered is not None or polls % check_every == 0:
                own = self._own_node()
                if own is None:
                    raise RuntimeError(self._exited())
                if own and answered == own:
                    return
                if own and answered is not None:
                    who = f"node {answered}" if answered else "no ingest node"
                    raise RuntimeError(f"node {self.name}: {self.address} answers as {who}, not as the server "
                                       f"the drill started (node {own}): is another server on port "
                                       f"{self.http_port}? see {self.log_where}")
            time.sleep(0.05)
        raise RuntimeError(f"node {self.name} did not answer as the node of its own store within "
                           f"{START_TIMEOUT_S:g} s; see {self.log_where}")


class LocalNode(_Http):
    def __init__(self, name: str, workdir: Path, http_port: int, repl_port: int):
        self.name = name
        self.data = workdir / f"data-{name}"
        self.log = workdir / f"{name}.log"
        self.http_port = http_port
        self.repl_port = repl_port
        self.config = workdir / "config.toml"
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def repl_address(self) -> str:
        return f"127.0.0.1:{self.repl_port}"

    @property
    def log_where(self) -> str:
        return str(self.log)

    def setup(self, config_text: str) -> None:
        self.config.write_text(config_text)

    def start(self, follow: LocalNode | None) -> None:
        cmd = [sys.executable, "-m", "ingest", "serve", "--data", str(self.data), "--port", str(self.http_port),
               "--replication-port", str(self.repl_port), "--config", str(self.config), "--log-level", "WARNING"]
        if follow is not None:
            cmd += ["--follow", follow.repl_address]
        self.started = True
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        self._wait_serving(1)

    def _own_node(self) -> str | None:
        """The node id in this node's store, "" before there is one; None
        once its process has exited. Alive is asked first: a store read
        from a dead server's directory proves nothing about who answers."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        return store_node(str(self.data))

    def _exited(self) -> str:
        # The server says why in its last line (a port in use, a bad config)
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        why = f": {lines[-1].strip()}" if lines else ""
        return f"node {self.name} exited{why}; see {self.log}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail_after(self, after: int) -> list[dict]:
        try:
            return list(requests_after(str(self.data), after))
        except TailIncomplete as exc:
            raise RuntimeError(str(exc)) from None

    def wipe(self) -> None:
        shutil.rmtree(self.data, ignore_errors=True)

    def log_count(self, text: str) -> int:
        """Lines of the node's log so far that say `text` (SNAPSHOT_INSTALLED,
        SYNC_DEGRADED); the log outlives restarts."""
        try:
            return self.log.read_text(errors="replace").count(text)
        except FileNotFoundError:
            return 0


def parse_hosts(spec: str, http_port: int, repl_port: int) -> list[tuple[str, int, int]]:
    """`A,B` or `A:HTTP:REPL,B:HTTP:REPL` (ports per host, so that two nodes
    can share one host) into [(host, http_port, repl_port)] * 2."""
    out = []
    for item in spec.split(","):
        parts = item.strip().split(":")
        if len(parts) == 1 and parts[0]:
            out.append((parts[0], http_port, repl_port))
        elif len(parts) == 3 and parts[0] and parts[1].isdigit() and parts[2].isdigit():
            out.append((parts[0], int(parts[1]), int(parts[2])))
        else:
            raise ValueError(f"--hosts: {item!r} is neither HOST nor HOST:HTTP_PORT:REPLICATION_PORT")
    if len(out) != 2:
        raise ValueError(f"--hosts: two hosts, not {len(out)}")
    if len({(h, p) for h, p, _ in out} | {(h, r) for h, _, r in out}) != 4:
        raise ValueError("--hosts: the two nodes need four distinct host:port pairs")
    return out


def fill(template: str, host: str, command: str) -> str:
    """The template with {host} and {command} replaced, each shell-quoted.
    One pass, so that braces inside the values are never read as fields."""
    values = {"host": shlex.quote(host), "command": shlex.quote(command)}
    return re.sub(r"\{(host|command)\}", lambda m: values[m.group(1)], template)


class RemoteNode(_Http):
    """A node on `host`, driven through `template` (run by the local /bin/sh).

    Its files on the host, all under `remote_dir`: data-NAME/ (the store),
    NAME.log (the server's stderr), NAME.pid, config-NAME.toml.
    """

    def __init__(self, name: str, host: str, http_port: int, repl_port: int, remote_dir: str, template: str,
                 python: str):
        self.name = name
        self.host = host
        self.http_port = http_port
        self.repl_port = repl_port
        self.template = template
        self.python = python
        self.dir = remote_dir.rstrip("/") or "/"
        self.data = f"{self.dir}/data-{name}"
        self.log = f"{self.dir}/{name}.log"
        self._pid = f"{self.dir}/{name}.pid"
        self.config = f"{self.dir}/config-{name}.toml"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def repl_address(self) -> str:
        return f"{self.host}:{self.repl_port}"

    @property
    def log_where(self) -> str:
        return f"{self.host}:{self.log}"

    def _run(self, script: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        # `sh -c` on the host: the script is POSIX sh whatever the login shell.
        command = fill(self.template, self.host, "sh -c " + shlex.quote(script))
        try:
            out = subprocess.run(command, shell=True, input=stdin, capture_output=True, text=True,
                                 timeout=REMOTE_TIMEOUT_S, stdin=None if stdin is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"node {self.name} on {self.host}: a command through {self.template!r} did not "
                               f"finish within {REMOTE_TIMEOUT_S:g} s") from None
        if check and out.returncode != 0:
            # One line: the last thing said (ssh's reason, the script's error);
            # the command is the template around a long script.
            said = [line.strip() for line in out.stderr.splitlines() if line.strip()]
            raise RuntimeError(f"node {self.name} on {self.host}: a command through {self.template!r} exited "
                               f"{out.returncode}{': ' + said[-1][-500:] if said else ''}")
        return out

    def _ours(self) -> str:
        """Shell: $pid is the server of the pid file if it still runs, else
        empty. A pid file can outlive its process and the pid be reused: only
        a process whose command line names this node's data directory is ours;
        a zombie (nobody may reap it) counts as gone."""
        q = shlex.quote
        return (f"pid=$(cat {q(self._pid)} 2>/dev/null) || pid=; "
                f'case "$(ps -ww -p "$pid" -o args= 2>/dev/null)" in *{q(self.data)}*) ;; *) pid= ;; esac; '
                f'alive() {{ s=$(ps -p "$pid" -o stat= 2>/dev/null) && [ -n "$s" ] && '
                f'case "$s" in *Z*) false ;; esac; }}; ')

    def _signal(self, first: str, grace_polls: int) -> str:
        """Shell: send `first`, wait for the end (0.1 s polls), SIGKILL
        after the grace, forget the pid file."""
        return (self._ours()
                + f'if [ -n "$pid" ]; then kill -{first} "$pid"; i=0; '
                  f'while alive && [ $i -lt {grace_polls} ]; do sleep 0.1; i=$((i+1)); done; '
                  f'if alive; then kill -KILL "$pid"; i=0; '
                  f'while alive && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; fi; '
                  f'if alive; then echo "pid $pid outlived SIGKILL" >&2; exit 1; fi; fi; '
                  f"rm -f {shlex.quote(self._pid)}")

    def setup(self, config_text: str) -> None:
        """The drill owns the node's files: a server left by an earlier drill
        is killed, its store and log removed, the configuration written."""
        self.kill()
        q = shlex.quote
        self._run(f"mkdir -p {q(self.dir)} && rm -rf {q(self.data)} && : > {q(self.log)} && cat > {q(self.config)}",
                  stdin=config_text)

    def start(self, follow: RemoteNode | None) -> None:
        q = shlex.quote
        serve = [self.python, "-m", "ingest", "serve", "--host", "0.0.0.0", "--port", str(self.http_port),
                 "--replication-port", str(self.repl_port), "--data", self.data, "--config", self.config,
                 "--log-level", "WARNING"]
        if follow is not None:
            serve += ["--follow", follow.repl_address]
        # The inner sh writes its own pid and execs the server, so the pid
        # file names the server itself; nohup and setsid (where there is one)
        # detach it from the remote session, and no descriptor of the
        # command's stays open, so the command returns at once.
        inner = f"echo $$ > {q(self._pid)} && exec {shlex.join(serve)}"
        self.started = True
        self._run(f"nohup $(command -v setsid) sh -c {q(inner)} >> {q(self.log)} 2>&1 < /dev/null &")
        self._wait_serving(20)

    def _own_node(self) -> str | None:
        """As LocalNode's, in one command on the host: whether the server of
        the pid file still runs, then the node id in its store."""
        read = shlex.join([self.python, "-c", STORE_NODE_PY, self.data])
        out = self._run(self._ours() + f'if [ -n "$pid" ] && alive; then echo alive; {read} 2>/dev/null; fi',
                        check=False)
        words = out.stdout.split()
        if words[:1] != ["alive"]:
            return None
        return words[1] if len(words) > 1 else ""

    def _exited(self) -> str:
        last = self._run(f"tail -n 1 {shlex.quote(self.log)}", check=False).stdout.strip()
        return f"node {self.name} exited{': ' + last if last else ''}; see {self.log_where}"

    def kill(self) -> None:
        self._run(self._signal("KILL", 0))

    def stop(self) -> None:
        self._run(self._signal("TERM", 300))

    def tail_after(self, after: int) -> list[dict]:
        out = self._run(shlex.join([self.python, "-m", "ingest", "tail", "--data", self.data,
                                    "--after", str(after)]))
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def wipe(self) -> None:
        self._run(f"rm -rf {shlex.quote(self.data)}")

    def log_count(self, text: str) -> int:
        out = self._run(f"grep -c {shlex.quote(text)} {shlex.quote(self.log)} 2>/dev/null || true")
        return int(out.stdout.strip() or 0)
