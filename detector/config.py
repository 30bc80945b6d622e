"""Service settings: one typed object, from defaults < TOML file < ``BULKWATCH_*`` env < CLI options.

Every field can be set in a TOML file (same name, top level), from the environment as
``BULKWATCH_<FIELD NAME IN UPPER CASE>`` and from the command line. Values are validated once, at start,
and a bad value fails with a :class:`SettingsError` naming where it came from.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

ENV_PREFIX = "BULKWATCH_"

log = logging.getLogger(__name__)

Source = Literal["simulator", "kafka"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class SettingsError(ValueError):
    """A setting is missing, malformed or out of range; the message names it and its origin."""


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


def _validate(s: Settings) -> None:
    positive = (
        "batch_size",
        "batch_max_wait_ms",
        "max_inflight_batches",
        "account_capacity",
        "cluster_capacity",
        "account_ttl_s",
        "sim_accounts",
        "sim_minutes",
    )
    for name in positive:
        if getattr(s, name) <= 0:
            raise SettingsError(f"{name}: must be > 0, got {getattr(s, name)}")
    if s.lateness_s < 0:
        raise SettingsError(f"lateness_s: must be >= 0, got {s.lateness_s}")
    if not 0 <= s.metrics_port <= 65_535:
        raise SettingsError(f"metrics_port: must be in 0..65535, got {s.metrics_port}")
    if not s.topics or any(not t for t in s.topics):
        raise SettingsError("topics: at least one non-empty topic name is required")
    if s.rate is not None and s.rate <= 0:
        raise SettingsError(f"rate: must be > 0 events/s, got {s.rate}")
    if s.duration_s is not None and s.duration_s <= 0:
        raise SettingsError(f"duration_s: must be > 0 seconds, got {s.duration_s}")
    if s.sasl_mechanism and s.security_protocol not in ("SASL_PLAINTEXT", "SASL_SSL"):
        raise SettingsError("sasl_mechanism: needs security_protocol SASL_PLAINTEXT or SASL_SSL")
    if s.security_protocol.startswith("SASL") and not (s.sasl_mechanism and s.sasl_username):
        raise SettingsError("security_protocol SASL_*: needs sasl_mechanism and sasl_username")
    if s.policy is not None and not Path(s.policy).is_file():
        raise SettingsError(f"policy: no such file {s.policy!r}")


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge defaults, the TOML file, ``BULKWATCH_*`` variables and explicit overrides, then validate."""
    values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"config file {path}: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path}: invalid TOML: {exc}") from exc
        for key, value in document.items():
            values[key] = _coerce(key, value, origin=f"{path}: {key}")
    environment = os.environ if env is None else env
    for key, value in environment.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX) :].lower()
            if name not in _FIELDS:
                # tools share the prefix (BULKWATCH_KAFKA_*, BULKWATCH_TEST_*): warn, don't fail
                log.warning("ignoring %s: not a bulkwatch setting", key)
                continue
            values[name] = _coerce(name, value, origin=key, from_text=True)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(key, value, origin=f"--{key.replace('_', '-')}")
    try:
        return Settings(**values)
    except SettingsError:
        raise
    except TypeError as exc:  # pragma: no cover - unknown keys are rejected by _coerce first
        raise SettingsError(str(exc)) from exc


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
    """A copy of ``settings`` with validated changes."""
    return load_settings(env={}, overrides={**dataclasses.asdict(settings), **changes})


__all__ = [
    "ENV_PREFIX",
    "Settings",
    "SettingsError",
    "load_settings",
    "replace",
    "settings_fields",
]
