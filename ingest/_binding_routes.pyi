"""Stub for the compiled ``ingest._binding_routes`` (source ``ext/_binding_routes.pyx``).

The common cases of ``POST /v1/bindings`` and ``POST /v1/bindings/batch``,
and the dispatch to them; ``ingest.app.App.post_binding_py``,
``App.post_batch_py`` and ``App.handle_py`` are the plain-Python twin and
answer every other case.
"""

from ingest.app import App
from ingest.http_types import Request

def post_binding(app: App, req: Request, slot: object) -> None: ...
def post_batch(app: App, req: Request, slot: object) -> None: ...
def handle(app: App, req: Request, slot: object) -> None: ...
