"""The two nodes of `ingest drill`: on this machine, or on real hosts.

The drill (ingest/drill.py) takes the same steps either way; only how a node
is set up, started, killed, read and wiped differs, behind the same methods:

- LocalNode: a child process of the drill, its data and log in the drill's
  work directory, loopback ports.
- RemoteNode: every operation is one shell command run on the node's host
  through a template such as `ssh {host} {command}`; the server runs there
  detached, its pid in a file, so that the drill SIGKILLs exactly that
  process. HTTP calls (status, promote) go straight to the host.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ingest.tail import TailIncomplete, bindings_after

SNAPSHOT_INSTALLED = "installed the snapshot"
START_TIMEOUT_S = 30.0
# One remote command: an ssh handshake plus, at most, the 30 s a stop waits.
REMOTE_TIMEOUT_S = 60.0
DEFAULT_REMOTE = "ssh -o BatchMode=yes {host} {command}"


class _Http:
    """What every node answers over HTTP."""

    name: str
    address: str
    token: str | None = None  # an admin token, when the nodes' config has access control

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://{self.address}/v1/status", timeout=5) as r:
            return json.loads(r.read())

    def promote(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(f"http://{self.address}/v1/admin/promote", data=b"{}", method="POST",
                                     headers=headers)
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def _wait_serving(self, exited, where: str, check_every: int) -> None:
        """Until GET /v1/status answers; `exited()` says the server died. It
        is asked every `check_every` polls: on a host it is a round trip."""
        deadline = time.monotonic() + START_TIMEOUT_S
        polls = 0
        while time.monotonic() < deadline:
            try:
                self.status()
                return
            except OSError:
                polls += 1
                if polls % check_every == 0 and exited():
                    raise RuntimeError(f"node {self.name} exited; see {where}") from None
                time.sleep(0.05)
        raise RuntimeError(f"node {self.name} did not start; see {where}")


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

    def setup(self, config_text: str) -> None:
        self.config.write_text(config_text)

    def start(self, follow: LocalNode | None) -> None:
        cmd = [sys.executable, "-m", "ingest", "serve", "--data", str(self.data), "--port", str(self.http_port),
               "--replication-port", str(self.repl_port), "--config", str(self.config), "--log-level", "WARNING"]
        if follow is not None:
            cmd += ["--follow", follow.repl_address]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        self._wait_serving(lambda: self.proc.poll() is not None, str(self.log), 1)

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
            return list(bindings_after(str(self.data), after))
        except TailIncomplete as exc:
            raise RuntimeError(str(exc)) from None

    def wipe(self) -> None:
        shutil.rmtree(self.data, ignore_errors=True)

    def snapshots_installed(self) -> int:
        """Snapshots the node has installed so far (its log outlives restarts)."""
        try:
            return self.log.read_text(errors="replace").count(SNAPSHOT_INSTALLED)
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

    def _run(self, script: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        # `sh -c` on the host: the script is POSIX sh whatever the login shell.
        command = fill(self.template, self.host, "sh -c " + shlex.quote(script))
        out = subprocess.run(command, shell=True, input=stdin, capture_output=True, text=True,
                             timeout=REMOTE_TIMEOUT_S, stdin=None if stdin is not None else subprocess.DEVNULL)
        if check and out.returncode != 0:
            raise RuntimeError(f"node {self.name} on {self.host}: {command!r} exited {out.returncode}: "
                               f"{out.stderr.strip()[-2000:]}")
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
        self._run(f"nohup $(command -v setsid) sh -c {q(inner)} >> {q(self.log)} 2>&1 < /dev/null &")
        self._wait_serving(lambda: not self._alive(), f"{self.host}:{self.log}", 20)

    def _alive(self) -> bool:
        out = self._run(self._ours() + 'if [ -n "$pid" ] && alive; then echo yes; fi', check=False)
        return out.stdout.strip() == "yes"

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

    def snapshots_installed(self) -> int:
        out = self._run(f"grep -c {shlex.quote(SNAPSHOT_INSTALLED)} {shlex.quote(self.log)} 2>/dev/null || true")
        return int(out.stdout.strip() or 0)
