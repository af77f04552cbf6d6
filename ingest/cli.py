"""The `ingest` command.

    ingest serve [--data DIR] [--host H] [--port P] [--config FILE]

With no options it serves on 127.0.0.1:8080 with ./data and the shipped
configuration: nothing else to install or run.
"""
from __future__ import annotations

import argparse
import logging
import sys


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
        server.run(cfg, args.data, args.host, args.port)
    except OSError as exc:
        print(f"ingest: cannot serve on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingest", description="Scan-ingest server of a mass-testing network.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the ingest server")
    serve.add_argument("--data", default="./data", help="LMDB data directory (default: ./data)")
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="listen port, 0 for any free port (default: 8080)")
    serve.add_argument("--config", default=None, help="TOML configuration (default: the shipped one)")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except ImportError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 3
