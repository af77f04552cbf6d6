"""Configuration: one TOML file, decoded and validated by msgspec.

`load(path)` returns a `Config`; a missing key takes the shipped default
(`default_config.toml`), a wrong type or value is a `ConfigError` naming it.
Every number has an upper bound as well as a lower one: an `inf` or a huge
value would otherwise pass here and break later, in C integers or timers.
"""
from __future__ import annotations

import re
from importlib import resources
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from msgspec import Meta, Struct

from ingest import codes
from ingest.access import Role
from ingest.events import Ident

# Upper bounds far above any real use and far below what overflows: the
# windows and ages in ms are C long longs in the kernels, sizes and depths
# Py_ssize_t, timers must be finite.
Seconds = Annotated[float, Meta(gt=0, le=86_400)]  # a timer longer than a day is a typo
Bytes = Annotated[int, Meta(ge=1, le=1 << 30)]
# A store does not open in less than about 64 KiB (MDB_MAP_FULL); 256 KiB
# leaves room and still lets a test fill a map quickly.
MapBytes = Annotated[int, Meta(ge=256 << 10, le=1 << 50)]
Count = Annotated[int, Meta(ge=1, le=1_000_000)]


class ConfigError(ValueError):
    pass


class Rules(Struct, forbid_unknown_fields=True):
    person_other_tube_window_hours: Annotated[float, Meta(ge=0, le=87_600)] = 12  # ten years
    scanned_at_future_minutes_max: Annotated[float, Meta(ge=0, le=525_600)] = 5  # a year
    scanned_at_age_days_max: Annotated[float, Meta(gt=0, le=3_650)] = 7  # ten years


class Limits(Struct, forbid_unknown_fields=True):
    body_bytes_max: Bytes = 2_097_152
    header_bytes_max: Bytes = 16_384
    request_seconds_max: Seconds = 10.0
    keepalive_seconds_max: Seconds = 75.0
    connections_max: Count = 20_000
    pipeline_depth_max: Annotated[int, Meta(ge=1, le=65_536)] = 64
    commit_events_max: Count = 4096
    drain_seconds_max: Seconds = 30.0


class StoreSettings(Struct, forbid_unknown_fields=True):
    map_bytes_initial: MapBytes = 64 << 20
    map_bytes_max: MapBytes = 1 << 40


class ReplicationSettings(Struct, forbid_unknown_fields=True):
    mode: Literal["async", "sync"] = "async"
    sync_timeout_s: Seconds = 10.0
    on_standby_lost: Literal["wait", "async"] = "async"
    # Change-log entries kept (the newest); 0 keeps them all. A standby that
    # needs an older one gets a snapshot of the whole store instead.
    log_keep_entries: Annotated[int, Meta(ge=0, le=10**12)] = 0
    # Mutual TLS between the pair (tls.py): PEM files of this
    # node's certificate and key and of the CA that signs the pair's. All
    # three or none.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""


class HttpSettings(Struct, forbid_unknown_fields=True):
    # HTTPS on the API port (tls.py): PEM files of the server's certificate
    # (its chain) and private key. Both or none.
    tls_cert_file: str = ""
    tls_key_file: str = ""


class StatsSettings(Struct, forbid_unknown_fields=True):
    # Hours of the statistics are server time in this IANA zone.
    time_zone: str = "UTC"


class Token(Struct, forbid_unknown_fields=True):
    # For the operator: which client holds the token. Never logged with it.
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    roles: Annotated[list[Role], Meta(min_length=1)]
    # The token's SHA-256 in hex: the config holds no token itself.
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
    # The labs its holder acts for, as lab_id in receipts and results
    # (ids of [[labs]]); none: every lab. A lab's token should name its own,
    # or it may post another lab's results, positives included.
    labs: Annotated[list[str], Meta(min_length=1)] | None = None
    # The sites its holder scans for, as site_id in bindings, seals and
    # boxes (and the site of the binding a void names, of the box a
    # hand-over names); none: every site. A site's phones should have their
    # own, so that one lost phone's token cannot write into other sites' tubes.
    sites: Annotated[list[Ident], Meta(min_length=1)] | None = None


class AccessSettings(Struct, forbid_unknown_fields=True):
    # With no token, every route is open: `ingest serve` then refuses any
    # listen address but loopback, unless this says that an authenticating
    # proxy in front controls who reaches the server.
    open_on_network: bool = False
    tokens: list[Token] = msgspec.field(default_factory=list)


class Lab(Struct, forbid_unknown_fields=True):
    id: Annotated[str, Meta(min_length=1, max_length=64)]
    prefix: Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[0-9A-Z]+$")]
    length: Annotated[int, Meta(ge=2, le=64)]
    charset: Literal["digits", "alnum"]
    check: Literal["luhn", "gs1", "mod37_36", "none"]


class Config(Struct, forbid_unknown_fields=True):
    rules: Rules = msgspec.field(default_factory=Rules)
    limits: Limits = msgspec.field(default_factory=Limits)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    stats: StatsSettings = msgspec.field(default_factory=StatsSettings)
    replication: ReplicationSettings = msgspec.field(default_factory=ReplicationSettings)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    access: AccessSettings = msgspec.field(default_factory=AccessSettings)
    labs: list[Lab] = msgspec.field(default_factory=list)

    @property
    def person_window_ms(self) -> int:
        return int(self.rules.person_other_tube_window_hours * 3_600_000)

    @property
    def future_ms_max(self) -> int:
        return int(self.rules.scanned_at_future_minutes_max * 60_000)

    @property
    def age_ms_max(self) -> int:
        return int(self.rules.scanned_at_age_days_max * 86_400_000)


def default_text() -> str:
    return resources.files("ingest").joinpath("default_config.toml").read_text()


def edit(text: str, old: str, new: str, section: str | None = None) -> str:
    """`text` (a config file's) with its first `old`, after the `[section]`
    header when one is named, replaced by `new`. The tools that run servers
    on the shipped file with a few settings changed (drill, benchmark, load
    test) edit it here: text, so that the file they write keeps its comments,
    and a ValueError when the setting is not there, because a tool that
    silently ran on other settings would prove or measure the wrong thing."""
    start, end = 0, len(text)
    if section is not None:
        header = f"[{section}]\n"
        start = 0 if text.startswith(header) else text.find("\n" + header) + 1
        if not start and not text.startswith(header):
            raise ValueError(f"the configuration has no [{section}] section")
        following = text.find("\n[", start + 1)
        end = end if following < 0 else following
    where = text.find(old, start, end)
    if where < 0:
        raise ValueError(f"the configuration has no {old!r}" + (f" in [{section}]" if section else "") + " to change")
    return text[:where] + new + text[where + len(old):]


# msgspec's words for a number out of bounds, e.g.
# "Expected `int` <= 1073741824 - at `$.limits.header_bytes_max`".
_OUT_OF_RANGE = re.compile(r"Expected `(?:int|float)` [<>]=? \S+ - at `\$(?P<path>(?:\.\w+|\[\d+\])+)`")
_STEP = re.compile(r"\.(\w+)|\[(\d+)\]")


def _number(value: float) -> str:
    # TOML's own spelling, so that the range can be pasted back.
    return f"{value:_}" if isinstance(value, int) else f"{value:g}"


def _allowed(info) -> str:
    if info.ge is not None and info.le is not None:
        return f"from {_number(info.ge)} to {_number(info.le)}"
    bounds = (("at least", info.ge), ("above", info.gt), ("at most", info.le), ("below", info.lt))
    return ", ".join(f"{word} {_number(bound)}" for word, bound in bounds if bound is not None)


def _range_error(exc: msgspec.ValidationError, text: str) -> str | None:
    """For a number outside its bounds: the key, the range and the value
    (msgspec names one bound only, and not the value)."""
    match = _OUT_OF_RANGE.fullmatch(str(exc))
    if match is None:
        return None
    info, value = msgspec.inspect.type_info(Config), msgspec.toml.decode(text)
    for name, index in _STEP.findall(match["path"]):
        if index:
            info, value = info.item_type, value[int(index)]
        else:
            info, value = next(f.type for f in info.fields if f.name == name), value[name]
    return f"{match['path'][1:]} must be {_allowed(info)}, not {_number(value)}"


def _decode(text: str) -> Config:
    try:
        return msgspec.toml.decode(text, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config: {_range_error(exc, text) or exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"config: {exc}") from None


def tube_schemes(labs: list[Lab]) -> codes.TubeSchemes:
    """The [[labs]] compiled as the server uses them; what TubeSchemes would
    refuse at start, after the store is open, is a ConfigError naming the lab."""
    reserved = (codes.LAB_UNKNOWN, codes.LAB_INVALID_TUBE)
    owner: dict[str, str] = {}
    schemes = []
    for lab in labs:
        if lab.id in reserved:
            raise ConfigError(f"config: lab {lab.id}: the id is reserved (the server names tubes of no lab "
                              f"{' and '.join(reserved)}); choose another")
        if lab.prefix in owner:
            raise ConfigError(f"config: labs {owner[lab.prefix]} and {lab.id} have the same prefix {lab.prefix}: "
                              "the second could never be found")
        owner[lab.prefix] = lab.id
        try:
            schemes.append(codes.TubeScheme(lab.id, lab.prefix, lab.length, lab.charset, lab.check))
        except ValueError as exc:
            raise ConfigError(f"config: lab {lab.id}: {str(exc).removeprefix(f'tube scheme {lab.id!r}: ')}") from None
    try:
        return codes.TubeSchemes(schemes)
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None


def _check_labs(labs: list[Lab]) -> None:
    if not labs:
        raise ConfigError("config: at least one [[labs]] tube scheme is needed")
    ids = [lab.id for lab in labs]
    if len(set(ids)) != len(ids):
        raise ConfigError("config: lab ids must be unique")
    for lab in labs:
        if len(lab.prefix) >= lab.length:
            raise ConfigError(f"config: lab {lab.id}: prefix must be shorter than length")
        if lab.charset == "digits" and not lab.prefix.isdigit():
            raise ConfigError(f"config: lab {lab.id}: a digits scheme needs a digit prefix")
        if lab.check in ("luhn", "gs1") and lab.charset != "digits":
            raise ConfigError(f"config: lab {lab.id}: {lab.check} needs charset digits")
        if lab.check == "mod37_36" and lab.charset != "alnum":
            # Its check character is one of 0-9A-Z: with digits, about three
            # barcodes in four the lab prints would be refused.
            raise ConfigError(f"config: lab {lab.id}: mod37_36's check character is one of 0-9A-Z: it needs "
                              "charset alnum")
    tube_schemes(labs)


# Names that stand for whatever the machine is set to, not for one zone: two
# nodes of a pair would both keep "localtime" and count the same log in
# different zones.
MACHINE_ZONES = frozenset({"localtime", "posixrules"})


def _check_time_zone(name: str) -> None:
    if name in MACHINE_ZONES:
        raise ConfigError(f"config: stats.time_zone: {name!r} is this machine's own setting, which another node may "
                          "not share: name the IANA zone itself, such as 'Asia/Shanghai'")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"config: stats.time_zone: unknown time zone {name!r}") from None


def loads(text: str) -> Config:
    config = _decode(text)
    _check_labs(config.labs)
    _check_time_zone(config.stats.time_zone)
    tls = (config.replication.tls_cert_file, config.replication.tls_key_file, config.replication.tls_ca_file)
    if any(tls) and not all(tls):
        raise ConfigError("config: replication TLS needs all of tls_cert_file, tls_key_file and tls_ca_file")
    if bool(config.http.tls_cert_file) != bool(config.http.tls_key_file):
        raise ConfigError("config: HTTPS needs both http.tls_cert_file and http.tls_key_file")
    digests = [t.sha256 for t in config.access.tokens]
    if len(set(digests)) != len(digests):
        raise ConfigError("config: two [[access.tokens]] have the same sha256: one token, one entry")
    lab_ids = {lab.id for lab in config.labs}
    for t in config.access.tokens:
        unknown = [lab for lab in t.labs or () if lab not in lab_ids]
        if unknown:
            raise ConfigError(f"config: access.tokens {t.name!r}: labs: {', '.join(map(repr, unknown))} is no "
                              f"[[labs]] id (there are {', '.join(sorted(lab_ids))})")
        if t.labs is not None and "lab" not in t.roles:
            raise ConfigError(f"config: access.tokens {t.name!r}: labs is given, but the token has no lab role")
        if t.sites is not None and "scan" not in t.roles:
            raise ConfigError(f"config: access.tokens {t.name!r}: sites is given, but the token has no scan role")
    if config.store.map_bytes_initial > config.store.map_bytes_max:
        raise ConfigError(f"config: store.map_bytes_initial ({_number(config.store.map_bytes_initial)}) exceeds "
                          f"store.map_bytes_max ({_number(config.store.map_bytes_max)})")
    return config


def load(path: str | None = None) -> Config:
    if path is None:
        return loads(default_text())
    try:
        # utf-8-sig: editors on Windows start UTF-8 files with a BOM, which
        # tomllib refuses as "Invalid statement (at line 1, column 1)".
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    # TOML is UTF-8 by definition; a UTF-16 file (a BOM of ff fe) is the usual culprit.
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config: {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    return loads(text)
