"""Barcode and person-code check kernels: the plain-Python twin of ``ext/_codes.pyx``.

This is the reference the compiled module is tested against, and what runs
under ``INGEST_PURE_PYTHON=1``.  Same names, same constants, same verdicts; any
``str`` gives an answer, never an exception.
"""

CHARSET_DIGITS = 0
CHARSET_ALNUM = 1

CHECK_NONE = 0
CHECK_LUHN = 1
CHECK_GS1 = 2
CHECK_MOD37_36 = 3

TUBE_INVALID = -1
TUBE_UNKNOWN_LAB = -2

PERSON_OK = 0
PERSON_LENGTH = 1
PERSON_CHARACTER = 2
PERSON_CHECK = 3
PERSON_REGION = 4
PERSON_BIRTH_DATE = 5

# GB 11643: nobody alive or registered was born before this date.
_BIRTH_DATE_MIN = 19000101

# Dict lookups rather than str.isdigit()/isalnum(), which accept any Unicode
# digit or letter ("٣", "Ⅳ") where only ASCII 0-9 and A-Z belong.
_DIGIT = {c: i for i, c in enumerate("0123456789")}
_ALNUM = {c: i for i, c in enumerate("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")}
_MOD11_CHECK = {**_DIGIT, "X": 10}


def _text(s):
    # Mirrors the compiled module, which refuses non-str before reading it.
    if not isinstance(s, str):
        raise TypeError(f"expected str, got {type(s).__name__}")
    return s


def _all_digits(s):
    return all(c in _DIGIT for c in s)


def luhn_ok(s):
    """All digits, at least two, and the last one is the Luhn check digit."""
    if len(_text(s)) < 2 or not _all_digits(s):
        return False
    total = 0
    for i, c in enumerate(reversed(s)):
        d = _DIGIT[c]
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def gs1_ok(s):
    """All digits, at least two, and the last one is the GS1 mod-10 check digit."""
    if len(_text(s)) < 2 or not _all_digits(s):
        return False
    # Weights 1 (the check digit), 3, 1, 3, ... counted from the right.
    total = sum(_DIGIT[c] * (3 if i % 2 else 1) for i, c in enumerate(reversed(s)))
    return total % 10 == 0


def mod37_36_ok(s):
    """At least two of ``0-9A-Z``, the last being the ISO 7064 MOD 37,36 check."""
    if len(_text(s)) < 2:
        return False
    p = 36
    for c in s[:-1]:
        v = _ALNUM.get(c)
        if v is None:
            return False
        p = (p + v) % 36 or 36
        p = p * 2 % 37
    v = _ALNUM.get(s[-1])
    return v is not None and (p + v) % 36 == 1


def mod11_2_ok(s):
    """Digits then an ISO 7064 MOD 11-2 check character (``0-9`` or ``X``)."""
    if len(_text(s)) < 2:
        return False
    p = 0
    for c in s[:-1]:
        v = _DIGIT.get(c)
        if v is None:
            return False
        p = (p + v) * 2 % 11
    v = _MOD11_CHECK.get(s[-1])
    return v is not None and (p + v) % 11 == 1


def _real_date(year, month, day):
    if month == 2:
        leap = (year % 4 == 0 and year % 100 != 0) or year % 400 == 0
        last = 29 if leap else 28
    elif month in (4, 6, 9, 11):
        last = 30
    else:
        last = 31
    return 1 <= month <= 12 and 1 <= day <= last


def _identity_number(s, today):
    if not _all_digits(s[:17]) or s[17] not in _MOD11_CHECK:
        return PERSON_CHARACTER
    # The check first: a mistyped digit is likelier than a forged number,
    # and rescanning is the right answer to it.
    if not mod11_2_ok(s):
        return PERSON_CHECK
    if s[0] == "0":
        return PERSON_REGION
    born = int(s[6:14])
    if (
        not _real_date(born // 10000, born // 100 % 100, born % 100)
        or born < _BIRTH_DATE_MIN
        or born > today
    ):
        return PERSON_BIRTH_DATE
    return PERSON_OK


def _registration_token(s):
    if not all(c in _ALNUM for c in s[2:]):
        return PERSON_CHARACTER
    return PERSON_OK if mod37_36_ok(s) else PERSON_CHECK


def person_check(s, today):
    """``PERSON_OK`` (0) for a valid person code, else a ``PERSON_*`` reason.

    ``today`` is the date as the int YYYYMMDD; birth dates after it are refused.
    """
    n = len(_text(s))
    if n == 18:
        return _identity_number(s, today)
    if n == 17 and s.startswith("HC"):
        return _registration_token(s)
    if n == 17 and s[:2].upper() == "HC":
        return PERSON_CHARACTER  # a token's length; its letters in the wrong case
    return PERSON_LENGTH


_CHECKS = {CHECK_LUHN: luhn_ok, CHECK_GS1: gs1_ok, CHECK_MOD37_36: mod37_36_ok}


def tube_classify(s, table):
    """Index in ``table`` of the scheme ``s`` belongs to, or ``TUBE_*`` (< 0).

    ``table`` holds ``(prefix, length, CHARSET_*, CHECK_*)`` tuples; the longest
    matching prefix picks the scheme, which then has to accept ``s`` whole.
    """
    if not _text(s) or not all(c in _ALNUM for c in s):
        return TUBE_INVALID
    best, best_len = -1, -1
    for i, (prefix, _, _, _) in enumerate(table):
        if len(prefix) > best_len and s.startswith(prefix):
            best, best_len = i, len(prefix)
    if best < 0:
        return TUBE_UNKNOWN_LAB
    _, length, charset, check = table[best]
    if len(s) != length or (charset == CHARSET_DIGITS and not _all_digits(s)):
        return TUBE_INVALID
    ok = _CHECKS.get(check)
    if ok is not None and not ok(s):
        return TUBE_INVALID
    return best

