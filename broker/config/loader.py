"""Configuration: embedded defaults, config.toml, then environment overrides.

The sections and their defaults are in :mod:`broker.config.sections`, imported from
here too; this module reads them (:func:`load_config`) and runs the checks that involve
more than one key (:mod:`broker.config.checks`, re-exported here).

Every key can be overridden by ``BROKER_<SECTION>_<KEY>`` (e.g. ``BROKER_JOBS_HISTORY_SIZE``);
the keys deployments change most also have short names (``PORT``, ``HOST``,
``WS_AUTH_TOKEN``, ``BROKER_API_KEY``, ``BROKER_JWT_SECRET``, ``BROKER_DB_PATH``).
Anything wrong raises :class:`ConfigError` naming the file (or variable) and the key.
"""

from __future__ import annotations

import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from .checks import WEBHOOK_EVENTS, check_cluster_store, parse_host_port, validate, validate_jwt, validate_webhooks
from .errors import ConfigError
from .sections import (
    ApiConfig,
    AuthConfig,
    BrowserConfig,
    ChatConfig,
    ClusterConfig,
    Config,
    JobsConfig,
    LimitsConfig,
    LogConfig,
    ProxyRoute,
    ServerConfig,
    StaticToken,
    StoreConfig,
    TlsConfig,
    WebhookEndpoint,
    WebhooksConfig,
    WebSocketConfig,
)

__all__ = [
    "ENV_ALIASES", "ApiConfig", "AuthConfig", "BrowserConfig", "ChatConfig", "ClusterConfig", "Config", "ConfigError",
    "JobsConfig", "LimitsConfig", "LogConfig", "ProxyRoute", "ServerConfig", "StaticToken", "StoreConfig", "TlsConfig",
    "WebSocketConfig", "check_cluster_store", "describe_unknown", "environment_keys", "unknown_environment", "load_config", "parse_host_port", "validate", "validate_jwt",
    "WebhookEndpoint", "WebhooksConfig", "WEBHOOK_EVENTS", "validate_webhooks",
]



_SECTIONS = {name: hint for name, hint in typing.get_type_hints(Config).items() if name not in ("source", "proxy", "webhook")}
ENV_ALIASES = {
    "PORT": ("server", "port"),
    "HOST": ("server", "host"),
    "WS_AUTH_TOKEN": ("auth", "env_token"),
    "BROKER_API_KEY": ("api", "keys"),
    "BROKER_JWT_SECRET": ("auth", "jwt_secret"),
    "BROKER_DB_PATH": ("store", "path"),
    "BROKER_LOG_LEVEL": ("log", "level"),
}


def load_config(path: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    """Defaults, then the TOML file at ``path`` (if given), then the environment.

    Relative ``store.path`` is resolved against the config file's directory, so the
    broker finds its data wherever it is started from.
    """
    environ = os.environ if environ is None else environ
    tables: dict[str, Any] = {}
    source = "<defaults>"
    base_dir = Path.cwd()
    if path is not None:
        file = Path(path)
        source = str(file)
        try:
            tables = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{file}: file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
        base_dir = file.resolve().parent
    sections: dict[str, Any] = {}
    for name in tables:
        if name not in _SECTIONS and name not in ("proxy", "webhook"):
            raise ConfigError(f"{source}: unknown section [{name}] (known: {', '.join(_SECTIONS)}, [[proxy]])")
    for name, cls in _SECTIONS.items():
        table = tables.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        sections[name] = _build_section(cls, table, name, source, environ)
    routes = tables.get("proxy", [])
    if not isinstance(routes, list):
        raise ConfigError(f"{source}: proxy routes are written [[proxy]] (an array of tables)")
    sections["proxy"] = tuple(
        _build_table(ProxyRoute, route, f"{source}: [[proxy]] #{index + 1}") if isinstance(route, dict)
        else _fail(f"{source}: [[proxy]] #{index + 1}: must be a table")
        for index, route in enumerate(routes)
    )
    sections["webhook"] = _webhook_endpoints(tables.get("webhook", []), source)
    store = sections["store"]
    if store.path != ":memory:" and not Path(store.path).is_absolute():
        sections["store"] = attrs.evolve(store, path=str(base_dir / store.path))
    config = Config(**sections, source=source)
    validate(config)
    return config


def _webhook_endpoints(endpoints: Any, source: str) -> tuple[WebhookEndpoint, ...]:
    if not isinstance(endpoints, list):
        raise ConfigError(f"{source}: webhook endpoints are written [[webhook]] (an array of tables)")
    return tuple(
        _build_table(WebhookEndpoint, endpoint, f"{source}: [[webhook]] #{index + 1}") if isinstance(endpoint, dict)
        else _fail(f"{source}: [[webhook]] #{index + 1}: must be a table")
        for index, endpoint in enumerate(endpoints)
    )


def _fail(message: str) -> Any:
    raise ConfigError(message)


def _build_section(cls: type, table: dict[str, Any], section: str, source: str,
                   environ: Mapping[str, str]) -> Any:
    fields = {f.name: f for f in attrs.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in table:
        if key not in fields:
            raise ConfigError(f"{source}: [{section}] unknown key {key!r} (known: {', '.join(fields)})")
    values = {}
    for name, field in fields.items():
        where = f"{source}: [{section}] {name}"
        if attrs.has(hints[name]):  # a nested table such as [server.tls]
            values[name] = _build_section(hints[name], table.get(name, {}), f"{section}.{name}", source, environ)
            continue
        if name in table:
            values[name] = _convert(table[name], hints[name], field, where)
        env_name, env_value = _env_override(section, name, environ)
        if env_value is not None:
            values[name] = _convert_env(env_value, hints[name], field, f"environment variable {env_name} ([{section}] {name})")
    return cls(**values)


def _env_name(section: str, key: str) -> str:
    """``BROKER_<SECTION>_<KEY>``; a nested table's dot is an underscore (BROKER_SERVER_TLS_CERT_FILE)."""
    return f"BROKER_{section.upper().replace('.', '_')}_{key.upper()}"


# BROKER_* variables that are no config key: the CLI's own (broker client/doctor's token,
# the development override of broker serve).
CLI_VARIABLES = ("BROKER_TOKEN", "BROKER_URL", "BROKER_ALLOW_DEV_SECRETS")


def environment_keys() -> dict[str, str]:
    """Every variable the configuration reads: name -> ``[section] key``."""
    names: dict[str, str] = {}

    def walk(cls: type, section: str) -> None:
        hints = typing.get_type_hints(cls)
        for field in attrs.fields(cls):
            if attrs.has(hints[field.name]):
                walk(hints[field.name], f"{section}.{field.name}")
            else:
                names[_env_name(section, field.name)] = f"[{section}] {field.name}"

    for section, cls in _SECTIONS.items():
        walk(cls, section)
    for alias, (section, key) in ENV_ALIASES.items():
        names[alias] = f"[{section}] {key}"
    return names


def unknown_environment(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """``BROKER_*`` variables that set nothing (a typo such as BROKER_SERVER_PROT), each
    with the closest variable that would (or None)."""
    import difflib

    environ = os.environ if environ is None else environ
    known = environment_keys()
    unknown = []
    for name in sorted(environ):
        if name.startswith("BROKER_") and name not in known and name not in CLI_VARIABLES:
            close = difflib.get_close_matches(name, list(known) + list(CLI_VARIABLES), n=1, cutoff=0.6)
            unknown.append((name, close[0] if close else None))
    return unknown


def describe_unknown(name: str, closest: str | None) -> str:
    """One line saying a variable sets nothing, and what was probably meant."""
    if closest is None:
        return f"environment variable {name} matches no configuration key (BROKER_<SECTION>_<KEY>): ignored"
    target = environment_keys().get(closest)
    return (f"environment variable {name} matches no configuration key: ignored; did you mean {closest}"
            + (f" ({target})?" if target else "?"))


def _env_override(section: str, key: str, environ: Mapping[str, str]) -> tuple[str, str | None]:
    long_name = _env_name(section, key)
    if environ.get(long_name):
        return long_name, environ[long_name]
    for alias, target in ENV_ALIASES.items():
        if target == (section, key) and environ.get(alias):
            return alias, environ[alias]
    return long_name, None


def _convert_env(raw: str, hint: Any, field: attrs.Attribute, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        return _convert([part.strip() for part in raw.split(",") if part.strip()], hint, field, where)
    if hint is bool:
        lowered = raw.strip().lower()
        if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ConfigError(f"{where}: expected true or false, got {raw!r}")
        return lowered in ("1", "true", "yes", "on")
    if hint in (int, float):
        try:
            return _convert(hint(raw), hint, field, where)
        except ValueError:
            raise ConfigError(f"{where}: expected {'an integer' if hint is int else 'a number'}, got {raw!r}") from None
    return _convert(raw, hint, field, where)


def _convert(value: Any, hint: Any, field: attrs.Attribute, where: str) -> Any:
    meta = field.metadata
    shown = "***" if meta.get("secret") else repr(value)
    origin = typing.get_origin(hint)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ConfigError(f"{where}: expected a table of strings")
        return dict(value)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {shown}")
        if attrs.has(item_type):
            items = []
            for index, item in enumerate(value):
                if not isinstance(item, dict):
                    raise ConfigError(f"{where}[{index}]: expected a table")
                items.append(_build_table(item_type, item, f"{where}[{index}]"))
            return tuple(items)
        return tuple(_convert(item, item_type, field, f"{where}[{index}]") for index, item in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {shown}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {shown}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number of seconds, got {shown}")
        value = float(value)
    elif hint is str and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {shown}")
    low, high, choices = meta.get("low"), meta.get("high"), meta.get("choices")
    if low is not None and value < low:
        raise ConfigError(f"{where}: must be at least {low}, got {shown}")
    if high is not None and value > high:
        raise ConfigError(f"{where}: must be at most {high}, got {shown}")
    if choices is not None:
        if isinstance(value, str) and value.upper() in choices:
            value = value.upper()
        if value not in choices:
            raise ConfigError(f"{where}: must be one of {', '.join(map(str, choices))}, got {shown}")
    return value


def _build_table(cls: type, table: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in attrs.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = set(table) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(fields)})")
    return cls(**{k: _convert(v, hints[k], fields[k], f"{where}.{k}") for k, v in table.items()})
