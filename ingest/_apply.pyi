"""Stub for the compiled ``ingest._apply`` (source ``ext/_apply.pyx``).

``ingest.rules.apply_binding_py`` is the plain-Python twin: same outcomes,
same store; ``ingest.rules.apply_binding`` is whichever of the two runs.
"""

from ingest.events import BindingEvent
from ingest.outcomes import Outcome
from ingest.writetx import WriteTx

def apply_binding(tx: WriteTx, ev: BindingEvent, lab: str, window_ms: int) -> Outcome: ...
