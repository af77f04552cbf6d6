"""Stub for the compiled ``ingest._codes`` (source ``ext/_codes.pyx``).

``ingest._codes_py`` is the plain-Python twin with the same names and verdicts.
"""

from typing import Final, TypeAlias

# (prefix, length, CHARSET_*, CHECK_*) per scheme; built by ingest.codes.TubeSchemes.
TubeTable: TypeAlias = tuple[tuple[str, int, int, int], ...]

CHARSET_DIGITS: Final = 0
CHARSET_ALNUM: Final = 1

CHECK_NONE: Final = 0
CHECK_LUHN: Final = 1
CHECK_GS1: Final = 2
CHECK_MOD37_36: Final = 3

TUBE_INVALID: Final = -1
TUBE_UNKNOWN_LAB: Final = -2

PERSON_OK: Final = 0
PERSON_LENGTH: Final = 1
PERSON_CHARACTER: Final = 2
PERSON_CHECK: Final = 3
PERSON_REGION: Final = 4
PERSON_BIRTH_DATE: Final = 5

def luhn_ok(s: str) -> bool: ...
def gs1_ok(s: str) -> bool: ...
def mod37_36_ok(s: str) -> bool: ...
def mod11_2_ok(s: str) -> bool: ...
def person_check(s: str, today: int) -> int: ...
def tube_classify(s: str, table: TubeTable) -> int: ...
