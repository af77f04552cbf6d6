"""The HTTP routes: every path the server answers, and which handler.

`resolve(method, path)` returns (handler name, path parameter) or an
ErrorCode (404/405). Handlers are methods of ingest.app.App with that name
(the GET routes of the data in reads.py, the node's own in node_routes.py).
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
    "/v1/boxes": {b"POST": "post_box"},
    "/v1/results": {b"POST": "post_results"},
    "/v1/positives": {b"GET": "get_positives"},
    "/v1/stats": {b"GET": "get_stats"},
    "/v1/status": {b"GET": "get_status"},
    "/v1/admin/promote": {b"POST": "post_promote"},
    "/metrics": {b"GET": "get_metrics"},
    "/livez": {b"GET": "get_livez"},
    "/readyz": {b"GET": "get_readyz"},
}

# (prefix, suffix) -> {method: handler}: "/prefix/{param}suffix", the
# parameter being one path segment.
WITH_PARAM: dict[tuple[str, str], dict[bytes, str]] = {
    ("/v1/tubes/", ""): {b"GET": "get_tube"},
    ("/v1/tubes/", "/seal"): {b"POST": "post_seal"},
    ("/v1/bindings/", "/void"): {b"POST": "post_void"},
    ("/v1/persons/", ""): {b"GET": "get_person"},
    ("/v1/boxes/", ""): {b"GET": "get_box"},
    ("/v1/sites/", "/stats"): {b"GET": "get_site_stats"},
    ("/v1/boxes/", "/handover"): {b"POST": "post_handover"},
    ("/v1/boxes/", "/receive"): {b"POST": "post_receive"},
    ("/v1/tubes/", "/receive"): {b"POST": "post_tube_receive"},
}


# handler -> its route as api.md writes it ("POST /v1/tubes/{…}/seal"): for
# answers that name the route without echoing the request's path.
ROUTE_OF: dict[str, str] = {
    **{handler: f"{method.decode()} {path}" for path, by in EXACT.items() for method, handler in by.items()},
    **{handler: f"{method.decode()} {prefix}{{…}}{suffix}"
       for (prefix, suffix), by in WITH_PARAM.items() for method, handler in by.items()},
}

# handler -> the role its caller's token must carry (access.py), or None:
# open to every client. Open are only the routes that show no person data
# and that load balancers, monitoring and the drill call without a token.
ROLE_OF: dict[str, str | None] = {
    "post_binding": "scan",
    "post_batch": "scan",
    "post_seal": "scan",
    "post_void": "scan",
    "post_box": "scan",
    "post_handover": "scan",
    "post_receive": "lab",
    "post_tube_receive": "lab",
    "post_results": "lab",
    "get_tube": "read",
    "get_person": "read",
    "get_box": "read",
    "get_positives": "read",
    "get_stats": "read",
    "get_site_stats": "read",
    "post_promote": "admin",
    "get_status": None,
    "get_metrics": None,
    "get_livez": None,
    "get_readyz": None,
}

# Routes whose every answer, errors too, is kept out of caches: that no
# binding names a person is person data as well.
PERSON_DATA = frozenset(name for name, role in ROLE_OF.items() if role == "read")


def _match(path: str) -> tuple[dict[bytes, str], str | None] | None:
    methods = EXACT.get(path)
    if methods is not None:
        return methods, None
    for (prefix, suffix), by_method in WITH_PARAM.items():
        if path.startswith(prefix) and path.endswith(suffix):
            param = path[len(prefix):len(path) - len(suffix)]
            if param and "/" not in param:
                text = _decode(param)
                return (by_method, text) if text is not None else None
    return None


def _decode(param: str) -> str | None:
    """A path parameter's text: percent-decoded, read as UTF-8; None when
    the bytes are not UTF-8. Such bytes name nothing: replacing them by
    U+FFFD made every such path name the one resource called U+FFFD. (The
    parser refuses raw non-ASCII bytes in a path, so only %-escapes carry
    them.)"""
    try:
        return unquote(param, errors="strict")
    except UnicodeDecodeError:
        return None


def resolve(method: bytes, path: str) -> tuple[str, str | None] | ErrorCode:
    found = _match(path)
    if found is None:
        return errors.NOT_FOUND
    methods, param = found
    # HEAD is GET without the body; the protocol writes the headers only.
    handler = methods.get(b"GET" if method == b"HEAD" else method)
    if handler is None:
        return errors.METHOD_NOT_ALLOWED
    return handler, param


def allowed(path: str) -> str:
    """The Allow header value for a 405 on `path`."""
    found = _match(path)
    names = [m.decode() for m in (found[0] if found else {})]
    if "GET" in names:
        names.append("HEAD")
    return ", ".join(names)
