"""Service settings: one typed object, from defaults < TOML file < ``BULKWATCH_*`` env < CLI options.

Every field can be set in a TOML file (same name, top level), from the environment as
``BULKWATCH_<FIELD NAME IN UPPER CASE>`` and from the command line. Values are validated once, at start,
and a bad value fails with a :class:`SettingsError` naming where it came from.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kernels.accounts import MAX_LATENESS_S, MAX_TTL_S
from kernels.hashtable import MAX_TABLE_CAPACITY

ENV_PREFIX = "BULKWATCH_"

log = logging.getLogger(__name__)

Source = Literal["simulator", "kafka"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class SettingsError(ValueError):
    """A setting is missing, malformed or out of range; the message names it and its origin.

    ``setting`` is the name of the offending field when one is to blame.
    """

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


@dataclass(frozen=True, slots=True)
class Settings:
    # where events come from
    source: Source = "simulator"
    bootstrap: str = "127.0.0.1:9092"
    topics: tuple[str, ...] = ("events",)
    group: str = "bulkwatch"
    signals_topic: str = "ban-signals"
    dlq_topic: str = "events-dlq"
    client_id: str = "bulkwatch"
    # Static group membership (KIP-345): unique per instance and stable across its restarts
    group_instance_id: str | None = None
    batch_size: int = 5000
    batch_max_wait_ms: int = 200
    max_inflight_batches: int = 2
    exactly_once: bool = False
    # Kafka security, passed through to aiokafka
    security_protocol: SecurityProtocol = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    # detection
    policy: str | None = None
    account_capacity: int = 1_000_000
    cluster_capacity: int = 200_000
    lateness_s: int = 30
    account_ttl_s: int = 2 * 86_400
    # state
    snapshot_dir: str | None = None
    snapshot_interval_s: float = 60.0
    # observability
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9108
    log_level: str = "INFO"
    # the embedded simulator source
    sim_accounts: int = 20_000
    sim_minutes: int = 60
    sim_seed: int = 1
    rate: float | None = None
    duration_s: float | None = None
    shutdown_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        _validate(self)

    def kafka_security(self) -> dict[str, Any]:
        """Security keyword arguments for aiokafka clients (no SSL context objects: sources build it)."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return options


# Bounds that come from the kernels: the state they size is allocated by kernels.accounts.
ACCOUNT_CAPACITY_MAX = MAX_TABLE_CAPACITY - 1  # new_account_state: capacity and pair_capacity
LATENESS_S_MAX = MAX_LATENESS_S  # 6 h
ACCOUNT_TTL_S_MAX = MAX_TTL_S  # 30 days
PORT_MAX = 65_535
TOPIC_NAME_MAX_CHARS = 249  # Kafka's limit on topic names
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]+")
GROUP_INSTANCE_ID_MAX_CHARS = 249  # the broker validates it as it validates topic names
_GROUP_INSTANCE_ID = re.compile(rf"[A-Za-z0-9._-]{{1,{GROUP_INSTANCE_ID_MAX_CHARS}}}")
_TLS_PROTOCOLS = ("SSL", "SASL_SSL")
_SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")


def _validate(s: Settings) -> None:
    """Raise :class:`SettingsError` naming the first setting that is out of range."""
    integer_ranges = (
        # (setting, lowest, highest or None, why the limit)
        ("batch_size", 1, None, ""),
        ("batch_max_wait_ms", 1, None, ""),
        ("max_inflight_batches", 1, None, ""),
        ("account_capacity", 1, ACCOUNT_CAPACITY_MAX, "slots of the account table"),
        ("cluster_capacity", 1, None, ""),
        ("lateness_s", 0, LATENESS_S_MAX, "6 h, the account kernel's limit"),
        ("account_ttl_s", 1, ACCOUNT_TTL_S_MAX, "30 days, the account kernel's limit"),
        ("metrics_port", 0, PORT_MAX, "0: any free port"),
        ("sim_accounts", 1, None, ""),
        ("sim_minutes", 1, None, ""),
        ("sim_seed", 0, None, "random seeds are non-negative"),
    )
    for name, low, high, why in integer_ranges:
        value = getattr(s, name)
        if value < low or (high is not None and value > high):
            if high is not None:
                limit = f"in [{low}, {high}]"
            else:
                limit = "> 0" if low == 1 else f">= {low}"
            note = f" ({why})" if why else ""
            raise SettingsError(f"{name}: must be {limit}{note}, got {value}", setting=name)
    seconds = (
        ("snapshot_interval_s", s.snapshot_interval_s),
        ("shutdown_timeout_s", s.shutdown_timeout_s),
        ("rate", s.rate),
        ("duration_s", s.duration_s),
    )
    for name, value in seconds:
        # NaN passes every comparison, so finiteness is checked first
        if value is not None and not (math.isfinite(value) and value > 0):
            raise SettingsError(f"{name}: must be a finite number > 0, got {value}", setting=name)
    _check_bootstrap(s.bootstrap)
    if not s.topics:
        raise SettingsError("topics: at least one topic name is required", setting="topics")
    for name, topic in [
        *(("topics", t) for t in s.topics),
        ("signals_topic", s.signals_topic),
        ("dlq_topic", s.dlq_topic),
    ]:
        _check_topic_name(name, topic)
    for name in ("signals_topic", "dlq_topic"):
        if getattr(s, name) in s.topics:
            raise SettingsError(
                f"{name}: {getattr(s, name)!r} is also an input topic (the service would read "
                "its own output)",
                setting=name,
            )
    if s.signals_topic == s.dlq_topic:
        raise SettingsError(
            f"dlq_topic: must differ from signals_topic, both are {s.dlq_topic!r}",
            setting="dlq_topic",
        )
    for name in ("group", "client_id", "metrics_host"):
        if not getattr(s, name).strip():
            raise SettingsError(f"{name}: must not be empty", setting=name)
    instance_id = s.group_instance_id
    if instance_id is not None and (
        not _GROUP_INSTANCE_ID.fullmatch(instance_id) or instance_id in (".", "..")
    ):
        raise SettingsError(
            f"group_instance_id: {s.group_instance_id!r} is not a valid Kafka group instance id "
            f"(1 to {GROUP_INSTANCE_ID_MAX_CHARS} of A-Z a-z 0-9 . _ -)",
            setting="group_instance_id",
        )
    if s.log_level.upper() not in LOG_LEVELS:
        raise SettingsError(
            f"log_level: expected one of {', '.join(LOG_LEVELS)}, got {s.log_level!r}",
            setting="log_level",
        )
    _check_security(s)
    if s.policy is not None and not Path(s.policy).is_file():
        raise SettingsError(f"policy: no such file {s.policy!r}", setting="policy")
    if (
        s.snapshot_dir is not None
        and Path(s.snapshot_dir).exists()
        and not Path(s.snapshot_dir).is_dir()
    ):
        raise SettingsError(
            f"snapshot_dir: {s.snapshot_dir!r} exists and is not a directory",
            setting="snapshot_dir",
        )


def _check_bootstrap(bootstrap: str) -> None:
    """``host[:port]`` entries, comma-separated; IPv6 addresses in brackets when a port follows."""
    for entry in (part.strip() for part in bootstrap.split(",")):
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ("" if rest else None)  # "": junk after ]
        elif entry.count(":") == 1:
            host, port = entry.split(":")
        else:  # a name, an IPv4 address or a bare IPv6 address: aiokafka's default port 9092
            host, port = entry, None
        if not host:
            raise SettingsError(
                f"bootstrap: expected host:port[,host:port], got {bootstrap!r}", setting="bootstrap"
            )
        if port is not None and not (port.isdigit() and 1 <= int(port) <= PORT_MAX):
            raise SettingsError(
                f"bootstrap: port of {entry!r} must be in [1, {PORT_MAX}]", setting="bootstrap"
            )


def _check_topic_name(name: str, topic: str) -> None:
    if (
        not _TOPIC_NAME.fullmatch(topic)
        or len(topic) > TOPIC_NAME_MAX_CHARS
        or topic in (".", "..")
    ):
        raise SettingsError(
            f"{name}: {topic!r} is not a Kafka topic name (1 to {TOPIC_NAME_MAX_CHARS} of "
            "A-Z a-z 0-9 . _ -)",
            setting=name,
        )


def _check_security(s: Settings) -> None:
    tls = s.security_protocol in _TLS_PROTOCOLS
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(s, name)
        if path is None:
            continue
        if not tls:
            raise SettingsError(
                f"{name}: set, but security_protocol {s.security_protocol} does not use TLS "
                "(use SSL or SASL_SSL)",
                setting=name,
            )
        if not Path(path).is_file():
            raise SettingsError(f"{name}: no such file {path!r}", setting=name)
    if s.ssl_keyfile is not None and s.ssl_certfile is None:
        raise SettingsError(
            "ssl_keyfile: needs ssl_certfile (the client certificate)", setting="ssl_keyfile"
        )
    sasl = s.security_protocol in _SASL_PROTOCOLS
    if not sasl:
        for name in ("sasl_mechanism", "sasl_username", "sasl_password"):
            if getattr(s, name) is not None:
                raise SettingsError(
                    f"{name}: set, but security_protocol {s.security_protocol} does not use SASL "
                    "(use SASL_PLAINTEXT or SASL_SSL)",
                    setting=name,
                )
        return
    for name in ("sasl_mechanism", "sasl_username", "sasl_password"):
        if not getattr(s, name):
            raise SettingsError(
                f"{name}: required with security_protocol {s.security_protocol}", setting=name
            )


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge defaults, the TOML file, ``BULKWATCH_*`` variables and explicit overrides, then validate.

    A value out of range fails with a :class:`SettingsError` that starts with where the value came
    from (``file: key``, the variable, or ``--option``), then names the setting and its limit.
    """
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"config file {path}: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path}: invalid TOML: {exc}") from exc
        for key, value in document.items():
            origins[key] = f"{path}: {key}"
            values[key] = _coerce(key, value, origin=origins[key])
    environment = os.environ if env is None else env
    for key, value in environment.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX) :].lower()
            if name not in _FIELDS:
                # tools share the prefix (BULKWATCH_KAFKA_*, BULKWATCH_TEST_*): warn, don't fail
                log.warning("ignoring %s: not a bulkwatch setting", key)
                continue
            origins[name] = key
            values[name] = _coerce(name, value, origin=key, from_text=True)
    for key, value in (overrides or {}).items():
        if value is not None:
            origins[key] = f"--{key.replace('_', '-')}"
            values[key] = _coerce(key, value, origin=origins[key])
    try:
        return Settings(**values)
    except SettingsError as exc:
        if exc.setting in origins:
            raise SettingsError(f"{origins[exc.setting]}: {exc}", setting=exc.setting) from None
        raise


def _coerce(name: str, value: Any, *, origin: str, from_text: bool = False) -> Any:
    if name not in _FIELDS:
        raise SettingsError(f"{origin}: unknown setting {name!r}")
    annotation = typing.get_type_hints(Settings)[name]
    try:
        return _convert(annotation, value, from_text)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{origin}: {exc}") from None


def _convert(annotation: Any, value: Any, from_text: bool) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if (value is None or (from_text and value == "")) and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, from_text)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ValueError(f"expected one of {choices}, got {value!r}")
        return value
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise TypeError(f"expected a list of strings, got {value!r}")
        return tuple(str(item).strip() for item in items if str(item).strip())
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if from_text and value.lower() in ("1", "true", "yes", "on"):
            return True
        if from_text and value.lower() in ("0", "false", "no", "off"):
            return False
        raise TypeError(f"expected a boolean, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, str if from_text else int):
            raise TypeError(f"expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise TypeError(f"expected an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, str if from_text else (int, float)):
            raise TypeError(f"expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise TypeError(f"expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported setting type {annotation!r}")  # pragma: no cover


def settings_fields() -> list[dataclasses.Field[Any]]:
    """The fields of :class:`Settings`, for the CLI and docs."""
    return list(dataclasses.fields(Settings))


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with ``changes`` converted and validated like any other source."""
    values = {name: _coerce(name, value, origin=name) for name, value in changes.items()}
    return dataclasses.replace(settings, **values)


__all__ = [
    "ACCOUNT_CAPACITY_MAX",
    "ACCOUNT_TTL_S_MAX",
    "ENV_PREFIX",
    "LATENESS_S_MAX",
    "Settings",
    "SettingsError",
    "load_settings",
    "replace",
    "settings_fields",
]
