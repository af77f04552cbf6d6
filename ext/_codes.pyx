# cython: language_level=3
"""Barcode and person-code check kernels (compiled twin of ``ingest._codes_py``).

Every function reads the ``str`` in place as ``Py_UCS4`` code points: no
encoding, no slicing, no allocation on the hot path.  Any ``str`` gives an
answer, never an exception; the names, constants and verdicts are those of the
Python twin, which the tests hold this module to.
"""

cimport cython

# Anonymous cpdef enums are C constants here and plain ints on the module.
cpdef enum:
    CHARSET_DIGITS = 0
    CHARSET_ALNUM = 1

cpdef enum:
    CHECK_NONE = 0
    CHECK_LUHN = 1
    CHECK_GS1 = 2
    CHECK_MOD37_36 = 3

cpdef enum:
    TUBE_INVALID = -1
    TUBE_UNKNOWN_LAB = -2

cpdef enum:
    PERSON_OK = 0
    PERSON_LENGTH = 1
    PERSON_CHARACTER = 2
    PERSON_CHECK = 3
    PERSON_REGION = 4
    PERSON_BIRTH_DATE = 5

# GB 11643: nobody alive or registered was born before this date.
cdef int _BIRTH_DATE_MIN = 19000101


cdef inline int _digit(Py_UCS4 c) noexcept:
    if c >= ord('0') and c <= ord('9'):
        return <int>c - ord('0')
    return -1


cdef inline int _alnum(Py_UCS4 c) noexcept:
    """Value 0..35 of ``0-9A-Z`` (upper case only), else -1."""
    if c >= ord('0') and c <= ord('9'):
        return <int>c - ord('0')
    if c >= ord('A') and c <= ord('Z'):
        return <int>c - ord('A') + 10
    return -1


cdef inline str _text(object s):
    # A typed ``str`` argument would refuse str subclasses, which the Python
    # twin takes; PyUnicode_Check accepts both and costs one flag test.
    if not isinstance(s, str):
        raise TypeError(f"expected str, got {type(s).__name__}")
    return <str>s


cdef inline bint _all_digits(str s, Py_ssize_t start, Py_ssize_t stop) noexcept:
    cdef Py_ssize_t i
    for i in range(start, stop):
        if _digit(s[i]) < 0:
            return False
    return True


cdef bint _luhn(str s) noexcept:
    cdef Py_ssize_t n = len(s), i
    cdef int d, total = 0
    cdef bint double = False
    if n < 2:
        return False
    for i in range(n - 1, -1, -1):
        d = _digit(s[i])
        if d < 0:
            return False
        if double:
            d *= 2
            if d > 9:
                d -= 9
        total += d
        double = not double
    return total % 10 == 0


cdef bint _gs1(str s) noexcept:
    cdef Py_ssize_t n = len(s), i
    cdef int d, total = 0
    cdef bint triple = False
    if n < 2:
        return False
    # Weights 1 (the check digit), 3, 1, 3, ... counted from the right.
    for i in range(n - 1, -1, -1):
        d = _digit(s[i])
        if d < 0:
            return False
        total += 3 * d if triple else d
        triple = not triple
    return total % 10 == 0


cdef bint _mod37_36(str s) noexcept:
    cdef Py_ssize_t n = len(s), i
    cdef int v, p = 36
    if n < 2:
        return False
    for i in range(n - 1):
        v = _alnum(s[i])
        if v < 0:
            return False
        p = (p + v) % 36
        if p == 0:
            p = 36
        p = (p * 2) % 37
    v = _alnum(s[n - 1])
    return v >= 0 and (p + v) % 36 == 1


cdef bint _mod11_2(str s) noexcept:
    cdef Py_ssize_t n = len(s), i
    cdef int v, p = 0
    cdef Py_UCS4 last
    if n < 2:
        return False
    for i in range(n - 1):
        v = _digit(s[i])
        if v < 0:
            return False
        p = ((p + v) * 2) % 11
    last = s[n - 1]
    v = 10 if last == 'X' else _digit(last)
    return v >= 0 and (p + v) % 11 == 1


cdef inline int _number(str s, Py_ssize_t start, Py_ssize_t stop) noexcept:
    """Value of the decimal digits ``s[start:stop]`` (already known digits)."""
    cdef int value = 0
    cdef Py_ssize_t i
    for i in range(start, stop):
        value = value * 10 + _digit(s[i])
    return value


cdef bint _real_date(int year, int month, int day) noexcept:
    cdef int last
    if month < 1 or month > 12 or day < 1:
        return False
    if month == 2:
        last = 29 if (year % 4 == 0 and year % 100 != 0) or year % 400 == 0 else 28
    elif month == 4 or month == 6 or month == 9 or month == 11:
        last = 30
    else:
        last = 31
    return day <= last


cdef int _identity_number(str s, long long today) noexcept:
    cdef Py_UCS4 last = s[17]
    cdef int born
    if not _all_digits(s, 0, 17) or not (last == 'X' or _digit(last) >= 0):
        return PERSON_CHARACTER
    # The check first: a mistyped digit is likelier than a forged number,
    # and rescanning is the right answer to it.
    if not _mod11_2(s):
        return PERSON_CHECK
    if s[0] == '0':
        return PERSON_REGION
    born = _number(s, 6, 14)
    if (not _real_date(born // 10000, born // 100 % 100, born % 100)
            or born < _BIRTH_DATE_MIN or born > today):
        return PERSON_BIRTH_DATE
    return PERSON_OK


cdef int _registration_token(str s) noexcept:
    cdef Py_ssize_t i
    for i in range(2, 17):
        if _alnum(s[i]) < 0:
            return PERSON_CHARACTER
    return PERSON_OK if _mod37_36(s) else PERSON_CHECK


def luhn_ok(s):
    """All digits, at least two, and the last one is the Luhn check digit."""
    return _luhn(_text(s))


def gs1_ok(s):
    """All digits, at least two, and the last one is the GS1 mod-10 check digit."""
    return _gs1(_text(s))


def mod37_36_ok(s):
    """At least two of ``0-9A-Z``, the last being the ISO 7064 MOD 37,36 check."""
    return _mod37_36(_text(s))


def mod11_2_ok(s):
    """Digits then an ISO 7064 MOD 11-2 check character (``0-9`` or ``X``)."""
    return _mod11_2(_text(s))


def person_check(s, long long today):
    """``PERSON_OK`` (0) for a valid person code, else a ``PERSON_*`` reason.

    ``today`` is the date as the int YYYYMMDD; birth dates after it are refused.
    """
    cdef str code = _text(s)
    cdef Py_ssize_t n = len(code)
    if n == 18:
        return _identity_number(code, today)
    if n == 17 and code[0] == 'H' and code[1] == 'C':
        return _registration_token(code)
    if n == 17 and code[0] in 'Hh' and code[1] in 'Cc':
        return PERSON_CHARACTER  # the twin: a token's length, its letters in the wrong case
    return PERSON_LENGTH


cdef inline bint _starts_with(str s, str prefix) noexcept:
    cdef Py_ssize_t i, n = len(prefix)
    if n > len(s):
        return False
    for i in range(n):
        if s[i] != prefix[i]:
            return False
    return True


# The table comes from the caller: a malformed one must raise, not crash.
@cython.boundscheck(True)
def tube_classify(s, tuple table not None):
    """Index in ``table`` of the scheme ``s`` belongs to, or ``TUBE_*`` (< 0).

    ``table`` holds ``(prefix, length, CHARSET_*, CHECK_*)`` tuples; the longest
    matching prefix picks the scheme, which then has to accept ``s`` whole.
    """
    cdef str code = _text(s)
    cdef Py_ssize_t n = len(code), i, best = -1, best_len = -1
    cdef Py_ssize_t prefix_len
    cdef tuple entry
    cdef str prefix
    cdef int check
    if n == 0:
        return TUBE_INVALID
    for i in range(n):
        if _alnum(code[i]) < 0:
            return TUBE_INVALID
    for i in range(len(table)):
        prefix = <str?>(<tuple?>table[i])[0]
        prefix_len = len(prefix)
        if prefix_len > best_len and _starts_with(code, prefix):
            best, best_len = i, prefix_len
    if best < 0:
        return TUBE_UNKNOWN_LAB
    entry = <tuple?>table[best]
    if n != <Py_ssize_t>entry[1]:
        return TUBE_INVALID
    if <int>entry[2] == CHARSET_DIGITS and not _all_digits(code, 0, n):
        return TUBE_INVALID
    check = <int>entry[3]
    if ((check == CHECK_LUHN and not _luhn(code))
            or (check == CHECK_GS1 and not _gs1(code))
            or (check == CHECK_MOD37_36 and not _mod37_36(code))):
        return TUBE_INVALID
    return best
