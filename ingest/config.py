"""Configuration: one TOML file, decoded and validated by msgspec.

`load(path)` returns a `Config`; a missing key takes the shipped default
(`default_config.toml`), a wrong type or value is a `ConfigError` naming it.
"""
from __future__ import annotations

from importlib import resources
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from msgspec import Meta, Struct

Positive = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(gt=0)]


class ConfigError(ValueError):
    pass


class Rules(Struct, forbid_unknown_fields=True):
    person_other_tube_window_hours: Annotated[float, Meta(ge=0)] = 12
    scanned_at_future_minutes_max: Annotated[float, Meta(ge=0)] = 5
    scanned_at_age_days_max: Annotated[float, Meta(gt=0)] = 7


class Limits(Struct, forbid_unknown_fields=True):
    body_bytes_max: PositiveInt = 2_097_152
    header_bytes_max: PositiveInt = 16_384
    request_seconds_max: Positive = 10.0
    keepalive_seconds_max: Positive = 75.0
    connections_max: PositiveInt = 20_000
    pipeline_depth_max: PositiveInt = 64
    commit_events_max: PositiveInt = 4096
    drain_seconds_max: Positive = 30.0


class StoreSettings(Struct, forbid_unknown_fields=True):
    map_bytes_initial: PositiveInt = 64 << 20
    map_bytes_max: PositiveInt = 1 << 40


class ReplicationSettings(Struct, forbid_unknown_fields=True):
    mode: Literal["async", "sync"] = "async"
    sync_timeout_s: Annotated[float, Meta(gt=0)] = 10.0
    on_standby_lost: Literal["wait", "async"] = "async"
    # Change-log entries kept (the newest); 0 keeps them all. A standby that
    # needs an older one gets a snapshot of the whole store instead.
    log_keep_entries: Annotated[int, Meta(ge=0)] = 0


class StatsSettings(Struct, forbid_unknown_fields=True):
    # Hours of the statistics are server time in this IANA zone.
    time_zone: str = "UTC"


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


def loads(text: str) -> Config:
    try:
        config = msgspec.toml.decode(text, type=Config)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConfigError(f"config: {exc}") from None
    if not config.labs:
        raise ConfigError("config: at least one [[labs]] tube scheme is needed")
    ids = [lab.id for lab in config.labs]
    if len(set(ids)) != len(ids):
        raise ConfigError("config: lab ids must be unique")
    for lab in config.labs:
        if len(lab.prefix) >= lab.length:
            raise ConfigError(f"config: lab {lab.id}: prefix must be shorter than length")
        if lab.charset == "digits" and not lab.prefix.isdigit():
            raise ConfigError(f"config: lab {lab.id}: a digits scheme needs a digit prefix")
        if lab.check in ("luhn", "gs1") and lab.charset != "digits":
            raise ConfigError(f"config: lab {lab.id}: {lab.check} needs charset digits")
    try:
        ZoneInfo(config.stats.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"config: stats.time_zone: unknown time zone {config.stats.time_zone!r}") from None
    if config.store.map_bytes_initial > config.store.map_bytes_max:
        raise ConfigError("config: store.map_bytes_initial exceeds map_bytes_max")
    return config


def load(path: str | None = None) -> Config:
    if path is None:
        return loads(default_text())
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    # TOML is UTF-8 by definition; a UTF-16 file (a BOM of ff fe) is the usual culprit.
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config: {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    return loads(text)
