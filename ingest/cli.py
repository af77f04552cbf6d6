"""The `ingest` command.

    ingest serve [--data DIR] [--host H] [--port P] [--config FILE]
    ingest export bindings|tubes|results [--data DIR] [--site S] [--since MS] [--until MS] [--out FILE]
    ingest drill [--hosts A,B [--remote 'ssh {host} {command}'] ...]
    ingest tail --data DIR --after SEQ [--out FILE]
    ingest token --name NAME --role ROLE [--role ROLE ...] [--lab LAB_ID ...] [--site SITE_ID ...]

With no options it serves on 127.0.0.1:8080 with ./data and the shipped
configuration: nothing else to install or run.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import stat
import sys
import typing


def _serve(args: argparse.Namespace) -> int:
    # Imported here so that a missing extension is reported as such, once.
    from ingest import codes, config, server

    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    if codes.IMPLEMENTATION != "cython":
        logging.getLogger("ingest").warning(
            "running the pure-Python kernels (INGEST_PURE_PYTHON=1): correct but slower"
        )
    try:
        server.run(cfg, args.data, args.host, args.port, args.follow, args.replication_port)
    except config.ConfigError as exc:  # the config contradicts the options (sync mode, no port; no tokens, a network)
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    except (server.StartError, server.Stopped) as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 1
    return 0


def _private(path: str, flags: int) -> int:
    from ingest.datadir import FILE_MODE

    return os.open(path, flags, FILE_MODE)


class OutRefused(OSError):
    """An --out that is there and is not this user's to fill with person codes."""


def _open_out(path: str) -> tuple[typing.TextIO, bool]:
    """--out opened for writing, and whether this call created it: a failed
    export removes a file it made, never one that was there (or /dev/...).

    Person codes: a file made here is its user's alone (0600). One that is
    there is taken only if it is this user's regular file (then made 0600
    too) or named pipe, or a character device (/dev/null): never through a
    symbolic link, never a file another user made beforehand in a shared
    directory to read what is written into it. It is emptied only after
    these checks."""
    created = True

    def opener(path: str, flags: int) -> int:
        nonlocal created
        flags = (flags & ~os.O_TRUNC) | os.O_NOFOLLOW
        try:
            return _private(path, flags | os.O_EXCL)
        except FileExistsError:
            created = False
        try:
            fd = _private(path, flags)
        except OSError as exc:
            if os.path.islink(path):
                raise OutRefused(f"{path} is a symbolic link; give the file itself") from exc
            raise
        try:
            st = os.fstat(fd)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
                raise OutRefused(f"{path} is there and is neither a regular file, a pipe nor a character device")
            # A pipe is as good as a file to whoever reads it: another user's
            # is refused too. Device nodes are root's to make.
            if not stat.S_ISCHR(st.st_mode) and st.st_uid != os.geteuid():
                raise OutRefused(f"{path} is there and belongs to another user (uid {st.st_uid})")
            if stat.S_ISREG(st.st_mode):
                os.fchmod(fd, 0o600)
                os.ftruncate(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    return open(path, "w", newline="", encoding="utf-8", opener=opener), created


def exit_on_termination() -> None:
    """SIGTERM and SIGHUP (an ssh session that ends) stop the command through
    SystemExit, as Ctrl-C does through KeyboardInterrupt, so that its
    `finally` blocks run: the store's reader slot is given back at once (a
    running server also frees a dead one's within seconds) and a half-made
    --out is removed."""
    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def stdout_failed(exc: OSError) -> int:
    """Exit status 1 for a write to standard output that failed; a closed
    pipe (`| head`) is the reader's doing and gets no message, as in any
    Unix filter."""
    # What is still buffered would fail again at the interpreter's final
    # flush ("Exception ignored ...", exit 120): let it go to /dev/null.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    if not isinstance(exc, BrokenPipeError):
        print(f"ingest: cannot write standard output: {exc.strerror or exc}", file=sys.stderr)
    return 1


def _export(args: argparse.Namespace) -> int:
    from ingest import export

    if args.what == "tubes" and (args.since != 0 or args.until != 2**63):
        # Used to be ignored without a word: every tube came out.
        print("ingest: --since/--until select bindings by scanned_at and results by tested_at; "
              "a tube has no such time: export tubes without them", file=sys.stderr)
        return 2
    exit_on_termination()
    # The store first: a mistyped --data must not empty an earlier export.
    try:
        reader = export.open_store(args.data)
    except lmdb_errors() as exc:
        print(f"ingest: cannot read the store in {args.data}: {exc}", file=sys.stderr)
        return 1
    try:
        return _export_from(reader, args)
    finally:
        reader.close()


def _export_from(reader, args: argparse.Namespace) -> int:
    from ingest import export

    def write(out: typing.TextIO) -> str:
        return f"exported {export.export(reader, args.what, out, args.site, args.since, args.until)} {args.what} rows"

    def read_failed(exc: BaseException) -> str:
        return f"cannot read the store in {args.data}: {exc}"

    return write_output(args.out, write, lmdb_errors(), read_failed)


def write_output(path: str | None, write: typing.Callable[[typing.TextIO], str | None],
                 read_errors: tuple[type[BaseException], ...],
                 read_failed: typing.Callable[[BaseException], str]) -> int:
    """Run write(out) into --out (opened as `_open_out` says) or standard
    output, and give the exit status: 0, with what write returned on stderr;
    1 when it failed, with a line saying why (read_failed for read_errors).
    A --out file made here is removed unless write finished: half an output
    would pass for all of it."""
    try:
        if path:
            out, created = _open_out(path)
        else:
            # UTF-8 whatever the locale: a site named in Chinese must not
            # end an export to a latin-1 terminal with a traceback.
            sys.stdout.reconfigure(encoding="utf-8", newline="")
            out, created = sys.stdout, False
    except OutRefused as exc:
        print(f"ingest: refusing --out: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ingest: cannot write --out {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    done = False
    try:
        said = write(out)
        # Flushed here, not at exit, so that a full disk is reported as such.
        if path:
            out.close()
        else:
            out.flush()
        done = True
    except read_errors as exc:
        print(f"ingest: {read_failed(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:  # the reading's own errors are read_errors: an OSError is the output's
        if not path:
            return stdout_failed(exc)
        print(f"ingest: cannot write --out {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        if not done and path:
            with contextlib.suppress(OSError):  # what is buffered can only fail again
                out.close()
            if created:
                with contextlib.suppress(OSError):
                    os.unlink(path)
    if said:
        print(f"ingest: {said}", file=sys.stderr)
    return 0


class AdminError(Exception):
    """An admin call got no usable answer; the text says what came back."""


def is_bearer_token(value: str) -> bool:
    """Printable ASCII without blanks, as every token `ingest token` makes:
    http.client would refuse a line break or mangle non-ASCII (latin-1),
    and the server strips blanks around the token."""
    return all("!" <= c <= "~" for c in value)


def urlopen(req, timeout: float):
    """urllib's urlopen without following redirects. urllib follows a 3xx
    with every header but the body's, so a bearer token went to whatever
    host (or plain-http URL) the answer named, and a POST became a GET whose
    answer passed for the promotion's. A 3xx comes back as an HTTPError."""
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    return urllib.request.build_opener(NoRedirect).open(req, timeout=timeout)


def _call(method: str, url: str, token: str | None) -> tuple[int, dict]:
    import http.client
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None, headers=headers)
        with urlopen(req, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read() or b"{}"
        if 300 <= status < 400:
            raise AdminError(f"{url} answered {status}, a redirect to {exc.headers.get('Location')!r}, not "
                             "followed (it would take the request and its token elsewhere): give the node's "
                             "own address") from None
    # http.client.InvalidURL, e.g. a space in the address --url let through.
    # Not a bad header: is_bearer_token() let none through that would be.
    except ValueError as exc:
        raise AdminError(f"cannot use {url}: {exc}") from None
    # Something else listening there: a garbled status line is no OSError.
    except http.client.HTTPException as exc:
        raise AdminError(f"{url} did not answer HTTP: {exc!r}") from None
    try:
        return status, json.loads(raw)
    except ValueError:
        raise AdminError(f"{url} answered {status} with a body that is not JSON: {raw[:80]!r}") from None


def _admin(method: str, path: str, args: argparse.Namespace, send_token: bool = True) -> int:
    # From the environment, not an option: a command line is visible to
    # every user of the machine (ps). Empty is unset, as for the shell.
    token = os.environ.get("INGEST_TOKEN") or None
    if token is not None and not is_bearer_token(token):
        # Never its value: this line goes to terminals and logs.
        print("ingest: INGEST_TOKEN is not a valid bearer token", file=sys.stderr)
        return 2
    if not send_token:
        token = None  # an open route: the token would only travel for nothing
    try:
        status, body = _call(method, args.url.rstrip("/") + path, token)
    except OSError as exc:
        print(f"ingest: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    except AdminError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2))
    return 0 if status == 200 else 1


def _promote(args: argparse.Namespace) -> int:
    return _admin("POST", "/v1/admin/promote" + ("?force=true" if args.force else ""), args)


def _status(args: argparse.Namespace) -> int:
    return _admin("GET", "/v1/status", args, send_token=False)


def toml_string(text: str) -> str:
    """A TOML basic string, ASCII only: JSON's escapes (TOML has them all),
    but a character above U+FFFF as \\U and eight hex digits, since TOML refuses the
    surrogate pair JSON would write."""
    quoted = json.dumps(text, ensure_ascii=False)  # quotes, backslashes and C0 controls escaped
    return "".join(c if " " <= c <= "~" else f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"
                   for c in quoted)


def _token(args: argparse.Namespace) -> int:
    from ingest.access import new_token, token_sha256

    if args.lab and "lab" not in args.role:
        print("ingest: --lab limits a token's lab role: give --role lab too", file=sys.stderr)
        return 2
    if args.site and "scan" not in args.role:
        print("ingest: --site limits a token's scan role: give --role scan too", file=sys.stderr)
        return 2
    token = new_token()
    print("# the token: give it to the client, it is not shown again")
    print(token)
    print("# add to the server's config (both nodes of a pair):")
    # Tests decode what this prints, with the server's config loader.
    print("[[access.tokens]]")
    print(f"name = {toml_string(args.name)}")
    print(f"roles = {json.dumps(sorted(set(args.role)))}")
    if args.lab:
        print(f"labs = [{', '.join(toml_string(lab) for lab in dict.fromkeys(args.lab))}]")
    if args.site:
        print(f"sites = [{', '.join(toml_string(site) for site in dict.fromkeys(args.site))}]")
    print(f'sha256 = "{token_sha256(token)}"')
    return 0


def lmdb_errors() -> tuple[type[BaseException], ...]:
    import lmdb

    return (lmdb.Error,)


def port_number(text: str) -> int:
    """A TCP port for argparse, 0 (any free port) to 65535: the OS takes a
    larger number modulo 65536, so 70000 would listen on 4464 unnoticed."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 0-65535")
    return port


# Seqs are u64 keys of the log (keys.seq_key), and the tail after SEQ
# begins at SEQ + 1.
SEQ_AFTER_MAX = 2**64 - 2


def seq_after(text: str) -> int:
    """--after of `ingest tail`: a seq from 0 to SEQ_AFTER_MAX."""
    try:
        seq = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a sequence number: {text!r}") from None
    if not 0 <= seq <= SEQ_AFTER_MAX:
        raise argparse.ArgumentTypeError(f"seq {text} is outside 0-{SEQ_AFTER_MAX}")
    return seq


def token_name(text: str) -> str:
    """--name of `ingest token`, held to the config's rule for it before a
    token is shown: an entry `ingest serve` then refused would have shown
    the operator a token for nothing."""
    import msgspec

    from ingest.config import Token

    rule = next(f.type for f in msgspec.inspect.type_info(Token).fields if f.name == "name")
    if any("\ud800" <= c <= "\udfff" for c in text):  # bytes that were not UTF-8 (surrogateescape)
        raise argparse.ArgumentTypeError(f"not valid UTF-8: {text!r}")
    if not rule.min_length <= len(text) <= rule.max_length:
        raise argparse.ArgumentTypeError(f"{len(text)} characters, not {rule.min_length} to {rule.max_length}")
    return text


def site_id(text: str) -> str:
    """--site of `ingest token`: a site_id as events carry it (1 to 64 characters)."""
    if not 1 <= len(text) <= 64 or any("\ud800" <= c <= "\udfff" for c in text):
        raise argparse.ArgumentTypeError(f"not a site_id (1 to 64 characters of valid UTF-8): {text!r}")
    return text


def host_port(text: str) -> str:
    """HOST:PORT of a primary, checked before anything is opened; port 1-65535
    (0 means "any port" only when listening, never when connecting)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"port of {text!r} is not a number from 1 to 65535")
    return text


def http_url(text: str) -> str:
    """An http(s)://HOST[:PORT] address; anything else would only fail, less
    clearly, when the request is made."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a URL: {text!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected http://HOST:PORT, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingest", description="Scan-ingest server of a mass-testing network.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the ingest server")
    serve.add_argument("--data", default="./data", help="LMDB data directory (default: ./data)")
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1)")
    serve.add_argument("--port", type=port_number, default=8080,
                       help="listen port, 0 for any free port (default: 8080)")
    serve.add_argument("--config", default=None, help="TOML configuration (default: the shipped one)")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.add_argument("--replication-port", type=port_number, default=None,
                       help="let standbys follow this node on this port (0: any free port)")
    serve.add_argument("--follow", type=host_port, default=None, metavar="HOST:PORT",
                       help="run as a read-only standby of the primary's replication port")
    serve.set_defaults(func=_serve)

    from ingest.access import ROLES

    token = sub.add_parser("token", help="make an access token and print its [[access.tokens]] entry")
    token.add_argument("--name", type=token_name, required=True,
                       help="who holds it (for the operator; kept in the config)")
    token.add_argument("--role", required=True, action="append", choices=ROLES,
                       help="a role it carries (repeat for several)")
    token.add_argument("--lab", action="append", default=None, metavar="LAB_ID",
                       help="with --role lab: a lab it acts for, as lab_id (repeat for several; default: every lab)")
    token.add_argument("--site", action="append", default=None, metavar="SITE_ID", type=site_id,
                       help="with --role scan: a site it scans for, as site_id (repeat for several; "
                            "default: every site)")
    token.set_defaults(func=_token)

    promote = sub.add_parser("promote", help="turn a standby into the primary (raises the epoch; "
                                             "with access control, an admin token in INGEST_TOKEN)")
    promote.add_argument("--url", type=http_url, default="http://127.0.0.1:8080", help="the standby's HTTP address")
    promote.add_argument("--force", action="store_true",
                         help="promote a fenced former primary, or a standby whose primary refused it: only when "
                              "the node whose history is ahead is gone for good (it loses what that node took)")
    promote.set_defaults(func=_promote)
    status = sub.add_parser("status", help="role, epoch, last sequence number, replication")
    status.add_argument("--url", type=http_url, default="http://127.0.0.1:8080", help="the node's HTTP address")
    status.set_defaults(func=_status)

    drill = sub.add_parser("drill", help="failover drill: kill the primary, promote, check every acknowledged event")
    drill.add_argument("--failovers", type=int, default=3)
    drill.add_argument("--seconds", type=float, default=3.0, help="load between failovers (randomized)")
    drill.add_argument("--mode", choices=["sync", "async"], default="sync")
    drill.add_argument("--threads", type=int, default=4, help="client threads driving the load")
    drill.add_argument("--rate", type=float, default=200.0, help="events per second of the steady load")
    drill.add_argument("--base-port", type=int, default=18700,
                       help="on this machine: HTTP ports base, base+1; replication +100")
    drill.add_argument("--workdir", default=None,
                       help="tails and the report, and on this machine the data directories and logs "
                            "(default: a temp dir)")
    real = drill.add_argument_group("against two real hosts (docs/operations.md)")
    real.add_argument("--hosts", default=None, metavar="A,B",
                      help="run the nodes on these hosts; HOST or HOST:HTTP_PORT:REPLICATION_PORT each")
    real.add_argument("--remote", default="ssh -o BatchMode=yes {host} {command}", metavar="TEMPLATE",
                      help="how to run a shell command on a host; {host} and {command} are filled in "
                           "shell-quoted, the result runs in /bin/sh here (default: %(default)s)")
    real.add_argument("--remote-dir", default="/var/lib/ingest-drill",
                      help="the drill's directory on each host: data-NODE/, NODE.log, NODE.pid, config "
                           "(default: %(default)s)")
    real.add_argument("--http-port", type=int, default=18700, help="HTTP port on each host (default: %(default)s)")
    real.add_argument("--replication-port", type=int, default=18800,
                      help="replication port on each host (default: %(default)s)")
    real.add_argument("--python", default="python3",
                      help="the Python on the hosts that has ingest installed (default: %(default)s)")
    drill.add_argument("--report", default=None, help="JSON report path (default: in the workdir)")
    drill.add_argument("--seed", type=int, default=None)
    drill.set_defaults(func=lambda args: __import__("ingest.drill", fromlist=["main"]).main(args))

    tail = sub.add_parser("tail", help="a store's log entries after a seq, as JSON lines of the requests "
                                       "that replay them (a dead primary's unreplicated tail)")
    tail.add_argument("--data", required=True, help="LMDB data directory (of a stopped node)")
    tail.add_argument("--after", type=seq_after, required=True, metavar="SEQ",
                      help="the last seq the new primary has (its last_seq after promotion)")
    tail.add_argument("--out", default=None, help="file to write (default: standard output); made 0600")
    tail.set_defaults(func=lambda args: __import__("ingest.tail", fromlist=["main"]).main(args))

    exp = sub.add_parser("export", help="write bindings, tubes or results as CSV (streaming)")
    exp.add_argument("what", choices=["bindings", "tubes", "results"])
    exp.add_argument("--data", default="./data", help="LMDB data directory (default: ./data)")
    exp.add_argument("--site", default=None, help="only this site")
    exp.add_argument("--since", type=int, default=0, help="from this Unix ms (scanned_at / tested_at)")
    exp.add_argument("--until", type=int, default=2**63, help="before this Unix ms")
    exp.add_argument("--out", default=None, help="file to write (default: standard output)")
    exp.set_defaults(func=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, getattr(args, "log_level", "INFO")),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except ImportError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 3
    except BrokenPipeError as exc:  # `ingest status | head -3`: no traceback
        return stdout_failed(exc)
