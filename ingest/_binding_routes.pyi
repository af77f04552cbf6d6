"""Stub for the compiled ``ingest._binding_routes`` (source ``ext/_binding_routes.pyx``).

The common case of ``POST /v1/bindings``; ``ingest.app.App.post_binding_py``
is the plain-Python twin and answers every other case.
"""

from ingest.app import App
from ingest.http_types import Request

def post_binding(app: App, req: Request, slot: object) -> None: ...
