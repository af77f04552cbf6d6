"""Tube barcodes and person codes: which lab a tube belongs to, whether a person code is real.

The checks run in a compiled kernel (``ext/_codes.pyx`` -> ``ingest._codes``);
``INGEST_PURE_PYTHON=1`` swaps in its plain-Python twin ``ingest._codes_py``
(same names, same verdicts, much slower).  ``IMPLEMENTATION`` says which one
runs.  This module adds what callers want on top: lab schemes compiled once
into the kernel's table, and human reasons for a refused person code.
"""
from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ingest import kernels

_impl = kernels.load("_codes", "_codes_py")
IMPLEMENTATION = kernels.IMPLEMENTATION

__all__ = [
    "DEMO_SCHEMES",
    "IMPLEMENTATION",
    "INVALID_TUBE",
    "LAB_INVALID_TUBE",
    "LAB_UNKNOWN",
    "PERSON_BIRTH_DATE",
    "PERSON_CHARACTER",
    "PERSON_CHECK",
    "PERSON_LENGTH",
    "PERSON_OK",
    "PERSON_REGION",
    "UNKNOWN_LAB",
    "TubeScheme",
    "TubeSchemes",
    "gs1_ok",
    "luhn_ok",
    "mod11_2_ok",
    "mod37_36_ok",
    "person_check",
    "person_ok",
    "person_reason",
    "tube_classify",
    "yyyymmdd",
]

luhn_ok = _impl.luhn_ok
gs1_ok = _impl.gs1_ok
mod37_36_ok = _impl.mod37_36_ok
mod11_2_ok = _impl.mod11_2_ok
person_check = _impl.person_check
tube_classify = _impl.tube_classify

PERSON_OK = _impl.PERSON_OK
PERSON_LENGTH = _impl.PERSON_LENGTH
PERSON_CHARACTER = _impl.PERSON_CHARACTER
PERSON_CHECK = _impl.PERSON_CHECK
PERSON_REGION = _impl.PERSON_REGION
PERSON_BIRTH_DATE = _impl.PERSON_BIRTH_DATE

# TubeSchemes.classify results below zero.
INVALID_TUBE = _impl.TUBE_INVALID
UNKNOWN_LAB = _impl.TUBE_UNKNOWN_LAB

# TubeSchemes.lab_of results that are not lab ids; TubeScheme refuses them as ids.
LAB_INVALID_TUBE = "<invalid tube>"
LAB_UNKNOWN = "<unknown lab>"

_REASONS = {
    PERSON_LENGTH: "length",
    PERSON_CHARACTER: "character",
    PERSON_CHECK: "check character",
    PERSON_REGION: "region code",
    PERSON_BIRTH_DATE: "birth date",
}

_CHARSETS = {"digits": _impl.CHARSET_DIGITS, "alnum": _impl.CHARSET_ALNUM}
_CHECKS = {
    "luhn": _impl.CHECK_LUHN,
    "gs1": _impl.CHECK_GS1,
    "mod37_36": _impl.CHECK_MOD37_36,
    "none": _impl.CHECK_NONE,
}
_ALLOWED = {"digits": frozenset("0123456789"), "alnum": frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")}


def yyyymmdd(day: datetime.date) -> int:
    """The ``today`` argument of the person checks: 2024-03-05 -> 20240305."""
    return day.year * 10000 + day.month * 100 + day.day


def person_ok(code: str, today_yyyymmdd: int) -> bool:
    return person_check(code, today_yyyymmdd) == PERSON_OK


def person_reason(code: str, today_yyyymmdd: int) -> str | None:
    """Why ``code`` is no person code ("length", "check character", ...), or None."""
    return _REASONS.get(person_check(code, today_yyyymmdd))


@dataclass(frozen=True, slots=True)
class TubeScheme:
    """One lab's tube barcodes: ``prefix`` then more of ``charset``, ``length`` in all.

    With a check other than "none" the last character is the check character,
    computed over the whole barcode, prefix included.
    """

    lab: str
    prefix: str
    length: int
    charset: Literal["digits", "alnum"]
    check: Literal["luhn", "gs1", "mod37_36", "none"]

    def __post_init__(self) -> None:
        def refuse(why: str) -> None:
            raise ValueError(f"tube scheme {self.lab!r}: {why}")

        if not self.lab or self.lab in (LAB_INVALID_TUBE, LAB_UNKNOWN):
            refuse("lab id must be non-empty and not a lab_of sentinel")
        if self.charset not in _CHARSETS:
            refuse(f"charset must be one of {sorted(_CHARSETS)}")
        if self.check not in _CHECKS:
            refuse(f"check must be one of {sorted(_CHECKS)}")
        if self.check in ("luhn", "gs1") and self.charset != "digits":
            refuse(f"{self.check} needs charset 'digits'")
        if self.check == "mod37_36" and self.charset != "alnum":
            refuse("mod37_36 needs charset 'alnum' (its check character is one of 0-9A-Z)")
        if not self.prefix or not set(self.prefix) <= _ALLOWED[self.charset]:
            refuse(f"prefix must be non-empty and of charset {self.charset!r}")
        # Room for at least one character after the prefix; it is the check
        # character when there is a check.
        if not isinstance(self.length, int) or self.length <= len(self.prefix):
            refuse("length must be an int longer than the prefix")


class TubeSchemes:
    """The configured labs, compiled once into the kernel's lookup table.

    ``classify(code)`` gives the index into ``labs``, or ``INVALID_TUBE`` /
    ``UNKNOWN_LAB``; the longest matching prefix picks the lab.
    """

    __slots__ = ("schemes", "labs", "table")

    def __init__(self, schemes: Iterable[TubeScheme]) -> None:
        self.schemes: tuple[TubeScheme, ...] = tuple(schemes)
        self.labs: tuple[str, ...] = tuple(s.lab for s in self.schemes)
        if len(set(self.labs)) != len(self.labs):
            raise ValueError("tube schemes: lab ids must be unique")
        prefixes = [s.prefix for s in self.schemes]
        # Two labs on one prefix would leave one of them unreachable.
        if len(set(prefixes)) != len(prefixes):
            raise ValueError("tube schemes: prefixes must be unique")
        self.table: tuple[tuple[str, int, int, int], ...] = tuple(
            (s.prefix, s.length, _CHARSETS[s.charset], _CHECKS[s.check]) for s in self.schemes
        )

    def classify(self, code: str) -> int:
        return tube_classify(code, self.table)

    def lab_of(self, code: str) -> str:
        """The lab id, or ``LAB_INVALID_TUBE`` / ``LAB_UNKNOWN``."""
        i = tube_classify(code, self.table)
        if i >= 0:
            return self.labs[i]
        return LAB_INVALID_TUBE if i == INVALID_TUBE else LAB_UNKNOWN

    def __repr__(self) -> str:
        return f"TubeSchemes({list(self.schemes)!r})"


DEMO_SCHEMES = TubeSchemes(
    [
        TubeScheme("DEMO-LUHN", prefix="10", length=12, charset="digits", check="luhn"),
        TubeScheme("DEMO-GS1", prefix="69", length=13, charset="digits", check="gs1"),
        TubeScheme("DEMO-M37", prefix="L", length=12, charset="alnum", check="mod37_36"),
    ]
)
