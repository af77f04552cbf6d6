"""Valid and deliberately bad codes for simulated sites, from the standards.

The check characters are computed with the textbook formulas (Luhn, GS1,
ISO 7064 MOD 37,36 and MOD 11-2), not with the server's kernels, so "valid"
here means valid by the standard. The test suite uses the same formulas.

Every code a `CodeMaker` hands out is distinct within a run: its number is
made of the worker index, the user number and a counter, so two users, two
Locust workers or two scans never share a tube or a person by accident (the
model in model.py is exact only because of that).
"""
from __future__ import annotations

import datetime
import random

DIGITS = "0123456789"
ALNUM = DIGITS + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# The shipped demo labs (ingest/default_config.toml).
LABS = ("DEMO-LUHN", "DEMO-GS1", "DEMO-M37")


def luhn_digit(body: str) -> str:
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str(-total % 10)


def gs1_digit(body: str) -> str:
    total = sum(int(c) * (3 if i % 2 == 0 else 1) for i, c in enumerate(reversed(body)))
    return str(-total % 10)


def mod37_36_char(body: str) -> str:
    p = 36
    for c in body:
        p = (p + ALNUM.index(c)) % 36 or 36
        p = p * 2 % 37
    return ALNUM[(1 - p) % 36]


def gb11643_char(body17: str) -> str:
    total = sum(int(c) * pow(2, 17 - i, 11) for i, c in enumerate(body17))
    return "0123456789X"[(12 - total % 11) % 11]


def base36(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 36)
        out.append(ALNUM[r])
    if n:
        raise ValueError("number too large for the width")
    return "".join(reversed(out))


def tube_code(lab: str, n: int) -> str:
    """The n-th tube barcode of a demo lab (n < 10**9 for DEMO-LUHN)."""
    if lab == "DEMO-LUHN":
        body = f"10{n % 10**9:09d}"
        return body + luhn_digit(body)
    if lab == "DEMO-GS1":
        body = f"69{n % 10**10:010d}"
        return body + gs1_digit(body)
    body = "L" + base36(n % 36**10, 10)
    return body + mod37_36_char(body)


def hc_token(n: int) -> str:
    body = "HC" + base36(n % 36**14, 14)
    return body + mod37_36_char(body)


_FIRST_BIRTH = datetime.date(1930, 1, 1)


def resident_id(n: int) -> str:
    """A resident id number: a region not starting with 0, a real past birth date, sequence, check."""
    n %= 800_000 * 30_000 * 1000
    n, seq = divmod(n, 1000)
    n, day = divmod(n, 30_000)  # 1930 + ~82 years: always in the past
    region = 110_000 + n
    born = _FIRST_BIRTH + datetime.timedelta(days=day)
    body = f"{region:06d}{born:%Y%m%d}{seq:03d}"
    return body + gb11643_char(body)


def wrong_check(code: str, rng: random.Random) -> str:
    """The code with its check character replaced by another one of its alphabet."""
    alphabet = ALNUM if not code[:-1].isdigit() or code[-1] == "X" else DIGITS
    return code[:-1] + rng.choice(alphabet.replace(code[-1], ""))


def unknown_lab_tube(n: int) -> str:
    """A well-formed barcode whose prefix no configured lab owns."""
    return f"55{n % 10**10:010d}"


class Exhausted(Exception):
    """A user used up its block of a lab's barcodes."""


# A slot per (worker, user): users are numbered from 1 in each worker, in the
# order they start (a stopped user's number is not reused).
WORKERS_MAX, USERS_MAX = 16, 4095


class CodeMaker:
    """Fresh codes for one simulated user: distinct across users, workers and scans of a run.

    Up to WORKERS_MAX Locust workers of USERS_MAX users each get disjoint
    blocks (a slot each), as long as they share the run number: it moves the
    blocks, so that runs against the same store rarely meet; a fresh store
    per run (loadtest/run.py) never does.
    """

    SLOTS = WORKERS_MAX * (USERS_MAX + 1)

    def __init__(self, run: int, worker: int, user: int):
        if not (0 <= worker < WORKERS_MAX and 0 <= user <= USERS_MAX):
            raise ValueError(f"codes are distinct for up to {WORKERS_MAX} workers of {USERS_MAX} users each")
        self.slot = worker * (USERS_MAX + 1) + user
        self.run = run
        self.people = 0
        self.tubes = {lab: 0 for lab in LABS}

    def tube(self, lab: str) -> str:
        """The next barcode of this user's block of the lab; Exhausted when the block is used up."""
        self.tubes[lab] += 1
        t = self.tubes[lab]
        if lab == "DEMO-M37":  # 36**10 barcodes: room for the run as well
            return tube_code(lab, (self.run % 8) << 48 | self.slot << 32 | t)
        block = (10**9 if lab == "DEMO-LUHN" else 10**10) // self.SLOTS
        if t >= block:
            raise Exhausted(lab)
        return tube_code(lab, (self.slot + self.run * 7919) % self.SLOTS * block + t)

    def person(self, rng: random.Random) -> str:
        self.people += 1
        if rng.random() < 0.6:
            return hc_token((self.run % 256) << 56 | self.slot << 32 | self.people)
        return resident_id((self.run % 16) << 40 | self.slot << 24 | self.people % 2**24)
