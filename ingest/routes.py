"""The HTTP routes: every path the server answers, and which handler.

`resolve(method, path)` returns (handler name, path parameter) or an
ErrorCode (404/405). Handlers are methods of ingest.app.App with that name.
docs/api.md describes each route.
"""
from __future__ import annotations

from urllib.parse import unquote

from ingest import errors
from ingest.errors import ErrorCode

# path -> {method: handler}
EXACT: dict[str, dict[bytes, str]] = {
    "/v1/bindings": {b"POST": "post_binding"},
    "/v1/bindings/batch": {b"POST": "post_batch"},
    "/v1/status": {b"GET": "get_status"},
    "/metrics": {b"GET": "get_metrics"},
    "/livez": {b"GET": "get_livez"},
    "/readyz": {b"GET": "get_readyz"},
}

# "/prefix/{param}" -> {method: handler}; the parameter is one path segment.
WITH_PARAM: dict[str, dict[bytes, str]] = {
    "/v1/tubes/": {b"GET": "get_tube"},
    "/v1/persons/": {b"GET": "get_person"},
}


def resolve(method: bytes, path: str) -> tuple[str, str | None] | ErrorCode:
    methods = EXACT.get(path)
    param = None
    if methods is None:
        for prefix, by_method in WITH_PARAM.items():
            if path.startswith(prefix):
                rest = path[len(prefix):]
                if rest and "/" not in rest:
                    methods, param = by_method, unquote(rest)
                break
        if methods is None:
            return errors.NOT_FOUND
    # HEAD is GET without the body; the protocol writes the headers only.
    handler = methods.get(b"GET" if method == b"HEAD" else method)
    if handler is None:
        return errors.METHOD_NOT_ALLOWED
    return handler, param


def allowed(path: str) -> str:
    """The Allow header value for a 405 on `path`."""
    methods = EXACT.get(path)
    if methods is None:
        for prefix, by_method in WITH_PARAM.items():
            if path.startswith(prefix):
                methods = by_method
                break
    names = [m.decode() for m in (methods or {})]
    if "GET" in names:
        names.append("HEAD")
    return ", ".join(names)
