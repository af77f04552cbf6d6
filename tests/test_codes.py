"""Code kernels: every test runs against both twins, and the twins against each other.

The check characters below are computed by small textbook formulas written
independently of the kernels, so a valid code here is valid by the standard,
not merely by agreement between the two implementations.
"""
import ast
import datetime
import json
import os
from pathlib import Path

import pytest
from helpers import compiled_kernel, run_python
from hypothesis import example, given
from hypothesis import strategies as st

from ingest import _codes_py, codes

REPO = Path(__file__).resolve().parents[1]
PURE = os.environ.get("INGEST_PURE_PYTHON") == "1"
DIGITS = "0123456789"
ALNUM = DIGITS + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
TODAY = codes.yyyymmdd(datetime.date.today())
KERNELS = ["luhn_ok", "gs1_ok", "mod37_36_ok", "mod11_2_ok"]


def _compiled():
    return compiled_kernel("_codes")


# Module scope: hypothesis refuses function-scoped fixtures, and a module is no state.
@pytest.fixture(scope="module", params=["python", "cython"])
def impl(request):
    return _codes_py if request.param == "python" else _compiled()


@pytest.fixture(scope="module")
def twins():
    return _codes_py, _compiled()


def same(twins, name, *args):
    """Call ``name`` in both twins; they must agree, on results and on raising."""
    outcomes = []
    for module in twins:
        try:
            outcomes.append(("returned", getattr(module, name)(*args)))
        except Exception as exc:
            outcomes.append(("raised", type(exc)))
    assert outcomes[0] == outcomes[1], (name, args)
    return outcomes[0][1]


# Textbook check characters, written from the standards, not from the kernels
# (one copy, shared with the test helpers and the load test's code maker).
from loadtest.codes import gb11643_char, gs1_digit, luhn_digit, mod37_36_char  # noqa: E402


def identity_number(region, born, sequence):
    body = f"{region}{born:%Y%m%d}{sequence}"
    return body + gb11643_char(body)


def substitute(code, position, alphabet, data):
    other = data.draw(st.sampled_from([c for c in alphabet if c != code[position]]))
    return code[:position] + other + code[position + 1 :]


def test_helpers_reproduce_the_textbook_examples():
    assert luhn_digit("7992739871") == "3"
    assert gs1_digit("400638133393") == "1"
    assert gs1_digit("690123456789") == "2"
    assert gb11643_char("11010519491231002") == "X"
    assert mod37_36_char("A12425GABC1234002") == "M"  # ISO 7064 example


# Vectors shared with the other implementations of the protocol.


def _vectors_path():
    default = Path(__file__).resolve().parents[2] / "shared/vectors/codes.jsonl"
    return Path(os.environ.get("INGEST_VECTORS", default))


def _load_vectors():
    path = _vectors_path()
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


VECTORS = _load_vectors()


def test_vectors_are_there():
    assert VECTORS, f"no vectors at {_vectors_path()} (set INGEST_VECTORS to the codes.jsonl file)"
    assert {v["kind"] for v in VECTORS} == {"tube", "person"}


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['kind']}-{v['code'] or 'empty'}")
def test_vector(impl, vector):
    code = vector["code"]
    if vector["kind"] == "tube":
        verdict = impl.tube_classify(code, codes.DEMO_SCHEMES.table) >= 0
    else:
        verdict = impl.person_check(code, TODAY) == impl.PERSON_OK
    assert verdict == vector["valid"], vector.get("why")


# Known values.


@pytest.mark.parametrize(
    "name, code, ok",
    [
        ("luhn_ok", "79927398713", True),
        ("luhn_ok", "79927398710", False),
        ("luhn_ok", "00", True),
        ("luhn_ok", "0", False),
        ("luhn_ok", "", False),
        ("luhn_ok", "7992739871X", False),
        ("luhn_ok", "７９９２７３９８７１３", False),  # full-width digits
        ("gs1_ok", "4006381333931", True),
        ("gs1_ok", "6901234567892", True),
        ("gs1_ok", "6901234567893", False),
        ("gs1_ok", "0", False),
        ("gs1_ok", "٦٩٠١٢٣٤٥٦٧٨٩٢", False),  # Arabic-Indic digits
        ("mod37_36_ok", "A12425GABC1234002M", True),
        ("mod37_36_ok", "AH", True),  # p = 20 after 'A'; (20 + 17) % 36 == 1
        ("mod37_36_ok", "02", True),  # p = 35 after '0'
        ("mod37_36_ok", "Z4", True),  # p = 33 after 'Z'
        ("mod37_36_ok", "00", False),
        ("mod37_36_ok", "ah", False),
        ("mod37_36_ok", "A", False),
        ("mod11_2_ok", "11010519491231002X", True),
        ("mod11_2_ok", "11010519491231002x", False),
        ("mod11_2_ok", "07940", True),  # ISO 7064 example
        ("mod11_2_ok", "079X", True),
        ("mod11_2_ok", "X0", False),
        ("mod11_2_ok", "0", False),
    ],
)
def test_known_values(impl, name, code, ok):
    assert getattr(impl, name)(code) is ok


def test_gb11643_example(impl):
    assert impl.person_check("11010519491231002X", TODAY) == impl.PERSON_OK


DAY = 20240615


@pytest.mark.parametrize(
    "code, reason",
    [
        (identity_number("110105", datetime.date(2000, 2, 29), "123"), "PERSON_OK"),
        (identity_number("110105", datetime.date(2024, 2, 29), "123"), "PERSON_OK"),
        (identity_number("110105", datetime.date(1900, 1, 1), "123"), "PERSON_OK"),
        (identity_number("110105", datetime.date(2024, 6, 15), "123"), "PERSON_OK"),
        (identity_number("110105", datetime.date(2024, 6, 16), "123"), "PERSON_BIRTH_DATE"),
        (identity_number("110105", datetime.date(1899, 12, 31), "123"), "PERSON_BIRTH_DATE"),
        (identity_number("010105", datetime.date(1980, 1, 1), "123"), "PERSON_REGION"),
        # Dates that do not exist, each with a right check character.
        *[
            ("11010" + b + "123" + gb11643_char("11010" + b + "123"), "PERSON_BIRTH_DATE")
            for b in ["519000229", "519990230", "519990431", "519991301", "519990001", "519990100"]
        ],
        ("11010519491231002", "PERSON_LENGTH"),
        ("11010519491231002X0", "PERSON_LENGTH"),
        ("", "PERSON_LENGTH"),
        # a token's length with its letters in the wrong case: the characters
        # are wrong, not the length (it used to say "length")
        ("hc" + "0" * 14 + "0", "PERSON_CHARACTER"),
        ("Hc36SMTBBZJPGBY8U", "PERSON_CHARACTER"),
        ("AB" + "0" * 15, "PERSON_LENGTH"),
        ("11010519491231002x", "PERSON_CHARACTER"),
        ("1101051949123100２X", "PERSON_CHARACTER"),
        ("X10105194912310020", "PERSON_CHARACTER"),
        ("11010519491231002A", "PERSON_CHARACTER"),
        ("11010519491231002Y", "PERSON_CHARACTER"),
        ("110105194912310021", "PERSON_CHECK"),
        ("HC" + "A" * 14 + mod37_36_char("HC" + "A" * 14), "PERSON_OK"),
        ("HC" + "a" * 14 + "0", "PERSON_CHARACTER"),
        ("HC" + "A" * 13 + "-" + "0", "PERSON_CHARACTER"),
        ("HC" + "A" * 14 + "a", "PERSON_CHARACTER"),
        ("HC" + "A" * 14 + ALNUM[ALNUM.index(mod37_36_char("HC" + "A" * 14)) - 1], "PERSON_CHECK"),
        ("HC" + "A" * 16 + "0", "PERSON_LENGTH"),
    ],
)
def test_person_reasons(impl, code, reason):
    assert impl.person_check(code, DAY) == getattr(impl, reason)


def test_constants_are_twins():
    names = [n for n in dir(_codes_py) if n.isupper() and not n.startswith("_")]
    compiled = _compiled()
    assert {n: getattr(compiled, n) for n in names} == {n: getattr(_codes_py, n) for n in names}


def test_stub_lists_exactly_the_public_names():
    tree = ast.parse((REPO / "ingest/_codes.pyi").read_text())
    stubbed = {
        node.name if isinstance(node, ast.FunctionDef) else node.target.id
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AnnAssign))
    } - {"TubeTable"}
    public = {n for n in dir(_codes_py) if not n.startswith("_")}
    assert stubbed == public
    assert public <= set(dir(_compiled()))


@pytest.mark.parametrize("bad", [None, b"79927398713", 79927398713, ["7", "9"]])
def test_non_str_is_a_type_error(impl, bad):
    for name in KERNELS:
        with pytest.raises(TypeError):
            getattr(impl, name)(bad)
    with pytest.raises(TypeError):
        impl.person_check(bad, TODAY)
    with pytest.raises(TypeError):
        impl.tube_classify(bad, codes.DEMO_SCHEMES.table)


def test_str_subclasses_are_str(impl):
    class Code(str):
        pass

    assert impl.luhn_ok(Code("79927398713"))
    assert impl.person_check(Code("11010519491231002X"), TODAY) == impl.PERSON_OK
    assert impl.tube_classify(Code("109836900604"), codes.DEMO_SCHEMES.table) == 0


@pytest.mark.parametrize("code", ["\ud800", "\x00" * 18, "1" * 100_000, "L" + "\U0001f600" * 11])
def test_odd_strings_never_raise(impl, code):
    for name in KERNELS:
        assert getattr(impl, name)(code) in (True, False)
    assert impl.person_check(code, TODAY) != impl.PERSON_OK
    assert impl.tube_classify(code, codes.DEMO_SCHEMES.table) < 0


# Tubes.

DIGITS_ONLY = (("1", 5, _codes_py.CHARSET_DIGITS, _codes_py.CHECK_NONE), ("12", 5, _codes_py.CHARSET_DIGITS, _codes_py.CHECK_NONE))


@pytest.mark.parametrize(
    "code, index",
    [
        ("13345", 0),
        ("12345", 1),  # the longer prefix wins
        ("1234", -1),  # ... and decides alone: no fallback to "1"
        ("1234A", -1),
        ("99999", -2),
        ("ABCDE", -2),
        ("", -1),
        ("12 45", -1),
        ("1234a", -1),
        ("١٢٣٤٥", -1),
    ],
)
def test_tube_prefixes(impl, code, index):
    assert impl.tube_classify(code, DIGITS_ONLY) == index
    assert impl.tube_classify(code, DIGITS_ONLY[::-1]) == (1 - index if index >= 0 else index)


@pytest.mark.parametrize(
    "code, lab",
    [
        ("1098369006" + "04", "DEMO-LUHN"),
        ("6926773546849", "DEMO-GS1"),
        ("LXUIL8PXNRE6", "DEMO-M37"),
        ("109836900600", codes.LAB_INVALID_TUBE),
        ("10983690060", codes.LAB_INVALID_TUBE),
        ("10111111111X", codes.LAB_INVALID_TUBE),
        ("lxuil8pxnre6", codes.LAB_INVALID_TUBE),
        ("", codes.LAB_INVALID_TUBE),
        ("79927398713", codes.LAB_UNKNOWN),
        ("M" + "0" * 11, codes.LAB_UNKNOWN),
    ],
)
def test_lab_of(code, lab):
    assert codes.DEMO_SCHEMES.lab_of(code) == lab
    index = codes.DEMO_SCHEMES.classify(code)
    if index >= 0:
        assert codes.DEMO_SCHEMES.labs[index] == lab
    else:
        assert index == (codes.INVALID_TUBE if lab == codes.LAB_INVALID_TUBE else codes.UNKNOWN_LAB)


def test_check_none_takes_any_charset_content():
    schemes = codes.TubeSchemes([codes.TubeScheme("X", "Q", 4, "alnum", "none")])
    assert schemes.lab_of("QZZ9") == "X"
    assert schemes.lab_of("QZZ") == codes.LAB_INVALID_TUBE


@pytest.mark.parametrize(
    "fields",
    [
        dict(lab=""),
        dict(lab=codes.LAB_UNKNOWN),
        dict(charset="hex"),
        dict(check="crc"),
        dict(charset="alnum", check="luhn", prefix="L"),
        dict(prefix=""),
        dict(prefix="1a"),
        dict(prefix="L"),
        dict(length=2),
        dict(length="12"),
    ],
)
def test_bad_scheme_is_refused(fields):
    good = dict(lab="LAB", prefix="10", length=12, charset="digits", check="luhn")
    with pytest.raises(ValueError):
        codes.TubeScheme(**{**good, **fields})


def test_schemes_refuse_shared_prefixes_and_ids():
    a = codes.TubeScheme("A", "10", 12, "digits", "luhn")
    with pytest.raises(ValueError, match="prefix"):
        codes.TubeSchemes([a, codes.TubeScheme("B", "10", 13, "digits", "gs1")])
    with pytest.raises(ValueError, match="lab ids"):
        codes.TubeSchemes([a, codes.TubeScheme("A", "69", 13, "digits", "gs1")])


def test_demo_schemes():
    assert codes.DEMO_SCHEMES.labs == ("DEMO-LUHN", "DEMO-GS1", "DEMO-M37")
    assert [(s.prefix, s.length, s.charset, s.check) for s in codes.DEMO_SCHEMES.schemes] == [
        ("10", 12, "digits", "luhn"),
        ("69", 13, "digits", "gs1"),
        ("L", 12, "alnum", "mod37_36"),
    ]


# The friendly layer.


def test_person_ok_and_reason():
    assert codes.person_ok("11010519491231002X", TODAY)
    assert codes.person_reason("11010519491231002X", TODAY) is None
    assert not codes.person_ok("110105194902300020", TODAY)
    assert codes.person_reason("110105194902300020", TODAY) == "birth date"
    assert codes.person_reason("010105194912310026", TODAY) == "region code"
    assert codes.person_reason("11010519491231002x", TODAY) == "character"
    assert codes.person_reason("11010519491231002", TODAY) == "length"
    assert codes.person_reason("110105194912310021", TODAY) == "check character"


def test_yyyymmdd():
    assert codes.yyyymmdd(datetime.date(2024, 3, 5)) == 20240305


def test_public_names():
    assert sorted(codes.__all__) == sorted(
        [
            "DEMO_SCHEMES", "IMPLEMENTATION", "INVALID_TUBE", "LAB_INVALID_TUBE", "LAB_UNKNOWN",
            "PERSON_BIRTH_DATE", "PERSON_CHARACTER", "PERSON_CHECK", "PERSON_LENGTH", "PERSON_OK",
            "PERSON_REGION", "UNKNOWN_LAB", "TubeScheme", "TubeSchemes", "gs1_ok", "luhn_ok",
            "mod11_2_ok", "mod37_36_ok", "person_check", "person_ok", "person_reason",
            "tube_classify", "yyyymmdd",
        ]
    )
    assert all(hasattr(codes, name) for name in codes.__all__)


def test_implementation_in_this_process():
    assert codes.IMPLEMENTATION == ("python" if PURE else "cython")
    expected = _codes_py if PURE else _compiled()
    assert codes.person_check is expected.person_check


def test_implementation_is_cython_by_default():
    _compiled()
    result = run_python("from ingest import codes; print(codes.IMPLEMENTATION)", pure=False)
    assert result.stdout.strip() == "cython", result.stderr


def test_implementation_is_python_when_forced():
    result = run_python(
        "from ingest import codes, _codes_py;"
        "assert codes.tube_classify is _codes_py.tube_classify;"
        "print(codes.IMPLEMENTATION)",
        pure=True,
    )
    assert result.stdout.strip() == "python", result.stderr


# Differential and property tests.

alnum_text = st.text(alphabet=ALNUM + "xa-", max_size=20)


@given(code=st.text(), today=st.integers(18000101, 30000101))
@example(code="", today=TODAY)
def test_twins_agree_on_any_text(twins, code, today):
    for name in KERNELS:
        same(twins, name, code)
    same(twins, "person_check", code, today)
    same(twins, "tube_classify", code, codes.DEMO_SCHEMES.table)


@given(code=alnum_text)
def test_twins_agree_on_code_like_text(twins, code):
    for name in KERNELS:
        same(twins, name, code)
    for prefixed in (code, "HC" + code, "L" + code, "10" + code, "69" + code):
        same(twins, "person_check", prefixed, TODAY)
        same(twins, "tube_classify", prefixed, codes.DEMO_SCHEMES.table)


SCHEMES = {
    "luhn_ok": (DIGITS, luhn_digit, DIGITS),
    "gs1_ok": (DIGITS, gs1_digit, DIGITS),
    "mod37_36_ok": (ALNUM, mod37_36_char, ALNUM),
    "mod11_2_ok": (DIGITS, gb11643_char, DIGITS + "X"),
}


@pytest.mark.parametrize("name", KERNELS)
@given(data=st.data())
def test_single_substitutions_are_caught(twins, name, data):
    body_alphabet, check_of, check_alphabet = SCHEMES[name]
    size = 17 if name == "mod11_2_ok" else data.draw(st.integers(1, 24))
    body = data.draw(st.text(alphabet=body_alphabet, min_size=size, max_size=size))
    code = body + check_of(body)
    assert same(twins, name, code) is True
    position = data.draw(st.integers(0, len(code) - 1))
    alphabet = check_alphabet if position == len(code) - 1 else body_alphabet
    assert same(twins, name, substitute(code, position, alphabet, data)) is False


@given(
    data=st.data(),
    region=st.from_regex(r"[1-9][0-9]{5}", fullmatch=True),
    born=st.dates(datetime.date(1900, 1, 1), datetime.date.today()),
    sequence=st.from_regex(r"[0-9]{3}", fullmatch=True),
)
def test_identity_numbers(twins, data, region, born, sequence):
    code = identity_number(region, born, sequence)
    assert same(twins, "person_check", code, TODAY) == _codes_py.PERSON_OK
    position = data.draw(st.integers(0, 17))
    alphabet = DIGITS + "X" if position == 17 else DIGITS
    assert same(twins, "person_check", substitute(code, position, alphabet, data), TODAY) != _codes_py.PERSON_OK


@given(year=st.integers(1890, 2100), month=st.integers(0, 13), day=st.integers(0, 32))
@example(year=1900, month=2, day=29)
@example(year=2000, month=2, day=29)
@example(year=2023, month=2, day=29)
@example(year=2024, month=2, day=29)
@example(year=2024, month=4, day=31)
@example(year=1899, month=12, day=31)
def test_birth_dates(twins, year, month, day):
    body = f"110105{year:04d}{month:02d}{day:02d}123"
    try:
        born = datetime.date(year, month, day)
    except ValueError:
        born = None
    expected_ok = born is not None and datetime.date(1900, 1, 1) <= born <= datetime.date.today()
    verdict = same(twins, "person_check", body + gb11643_char(body), TODAY)
    assert verdict == (_codes_py.PERSON_OK if expected_ok else _codes_py.PERSON_BIRTH_DATE)


@given(data=st.data(), body=st.text(alphabet=ALNUM, min_size=14, max_size=14))
def test_registration_tokens(twins, data, body):
    code = "HC" + body + mod37_36_char("HC" + body)
    assert same(twins, "person_check", code, TODAY) == _codes_py.PERSON_OK
    mutated = substitute(code, data.draw(st.integers(2, 16)), ALNUM, data)
    assert same(twins, "person_check", mutated, TODAY) == _codes_py.PERSON_CHECK


DEMO_BODIES = [
    (0, "10", DIGITS, 9, luhn_digit),
    (1, "69", DIGITS, 10, gs1_digit),
    (2, "L", ALNUM, 10, mod37_36_char),
]


@pytest.mark.parametrize("lab, prefix, alphabet, size, check_of", DEMO_BODIES)
@given(data=st.data())
def test_demo_tubes(twins, data, lab, prefix, alphabet, size, check_of):
    body = prefix + data.draw(st.text(alphabet=alphabet, min_size=size, max_size=size))
    code = body + check_of(body)
    table = codes.DEMO_SCHEMES.table
    assert same(twins, "tube_classify", code, table) == lab
    # Past the prefix a substitution keeps the lab and breaks the check.
    mutated = substitute(code, data.draw(st.integers(len(prefix), len(code) - 1)), alphabet, data)
    assert same(twins, "tube_classify", mutated, table) == _codes_py.TUBE_INVALID
