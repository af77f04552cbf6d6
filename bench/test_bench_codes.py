"""Code kernels, compiled vs Python twin, on one fixed mix of ~1000 codes each.

    pytest bench/test_bench_codes.py --benchmark-only -p no:cacheprovider

Each round checks the whole list once; the report groups the two twins of a
kernel side by side.  The data is seeded, so runs compare like with like.
"""
import random
from itertools import repeat

import pytest
from twins import kernel_and_twin

from ingest import _codes_py
from ingest.codes import DEMO_SCHEMES

CODES_PER_ROUND = 1000
# Fixed, so that the same birth dates are "in the future" on every run.
TODAY = 20250601
DIGITS = "0123456789"
ALNUM = DIGITS + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _complete(body, alphabet, ok):
    """``body`` plus the one check character that ``ok`` accepts."""
    return next(body + c for c in alphabet if ok(body + c))


def _draw(rng, alphabet, n):
    return "".join(rng.choice(alphabet) for _ in range(n))


def _damage(rng, code):
    """One of the mistakes scanners and typists make."""
    i = rng.randrange(len(code))
    kind = rng.randrange(4)
    if kind == 0:
        return code[:i] + rng.choice(DIGITS.replace(code[i], "") or "1") + code[i + 1 :]
    if kind == 1:
        return code[:i] + code[i + 1 :]
    if kind == 2:
        return code.lower()
    return code + rng.choice(DIGITS)


def person_codes(rng, n):
    out = []
    for _ in range(n):
        if rng.random() < 0.7:
            born = f"{rng.randint(1930, 2024)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
            body = rng.choice("123456789") + _draw(rng, DIGITS, 5) + born + _draw(rng, DIGITS, 3)
            code = _complete(body, DIGITS + "X", _codes_py.mod11_2_ok)
        else:
            code = _complete("HC" + _draw(rng, ALNUM, 14), ALNUM, _codes_py.mod37_36_ok)
        out.append(code if rng.random() < 0.6 else _damage(rng, code))
    return out


def tube_codes(rng, n):
    out = []
    for _ in range(n):
        lab = rng.randrange(3)
        if lab == 0:
            code = _complete("10" + _draw(rng, DIGITS, 9), DIGITS, _codes_py.luhn_ok)
        elif lab == 1:
            code = _complete("69" + _draw(rng, DIGITS, 10), DIGITS, _codes_py.gs1_ok)
        else:
            code = _complete("L" + _draw(rng, ALNUM, 10), ALNUM, _codes_py.mod37_36_ok)
        r = rng.random()
        if r < 0.1:
            code = "9" + code[1:]  # no lab owns this prefix
        elif r > 0.6:
            code = _damage(rng, code)
        out.append(code)
    return out


_rng = random.Random(42)
PERSONS = person_codes(_rng, CODES_PER_ROUND)
TUBES = tube_codes(_rng, CODES_PER_ROUND)
PERSONS_VALID = sum(_codes_py.person_check(c, TODAY) == 0 for c in PERSONS)
TUBES_VALID = sum(_codes_py.tube_classify(c, DEMO_SCHEMES.table) >= 0 for c in TUBES)

IMPLS = kernel_and_twin("_codes", _codes_py)


# map() keeps the per-code loop in C, so the figures are the kernels' own.
@pytest.mark.benchmark(group="person_check x1000")
@pytest.mark.parametrize("impl", IMPLS)
def test_person_check(benchmark, impl):
    def round_():
        return list(map(impl.person_check, PERSONS, repeat(TODAY)))

    benchmark.extra_info["valid"] = PERSONS_VALID
    assert benchmark(round_).count(0) == PERSONS_VALID


@pytest.mark.benchmark(group="tube_classify x1000")
@pytest.mark.parametrize("impl", IMPLS)
def test_tube_classify(benchmark, impl):
    def round_():
        return list(map(impl.tube_classify, TUBES, repeat(DEMO_SCHEMES.table)))

    benchmark.extra_info["valid"] = TUBES_VALID
    assert sum(i >= 0 for i in benchmark(round_)) == TUBES_VALID
