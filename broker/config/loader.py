"""Configuration: embedded defaults, config.toml, then environment overrides.

The sections and their defaults are in :mod:`broker.config.sections`, imported from
here too; this module reads them (:func:`load_config`) and checks what involves more
than one key (:func:`validate`).

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
from urllib.parse import urlsplit

import attrs

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
    "WebSocketConfig", "check_cluster_store", "describe_unknown", "environment_keys", "unknown_environment", "load_config", "validate", "validate_jwt",
    "WebhookEndpoint", "WebhooksConfig", "WEBHOOK_EVENTS", "validate_webhooks",
]


class ConfigError(Exception):
    """A configuration value is missing, mistyped or out of range."""


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


_SUPPORTED_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA", "PS256",
                         "PS384", "PS512")


def validate(config: Config) -> None:
    """Checks that involve more than one key."""
    src = config.source
    for path_key in ("ws_path", "health_path", "metrics_path", "publish_path", "api_prefix"):
        value = getattr(config.server, path_key)
        if not value.startswith("/"):
            raise ConfigError(f"{src}: [server] {path_key}: must start with '/', got {value!r}")
    paths = [config.server.ws_path, config.server.health_path, config.server.metrics_path, config.server.publish_path]
    if len(set(paths)) != len(paths):
        raise ConfigError(f"{src}: [server] the *_path keys must all differ, got {paths}")
    for path_key in ("console_path", "client_path", "admin_path", "sse_path"):
        value = getattr(config.browser, path_key)
        if value and (not value.startswith("/") or value.endswith("/") or value in paths):
            raise ConfigError(f"{src}: [browser] {path_key}: must start with '/', not end with '/', and differ "
                              f"from the [server] paths, or be \"\" (off); got {value!r}")
    validate_jwt(config.auth, src)
    for index, static in enumerate(config.auth.static_tokens):
        if len(static.token) < 8:
            raise ConfigError(f"{src}: [auth] static_tokens[{index}].token: use at least 8 characters")
        if not static.user:
            raise ConfigError(f"{src}: [auth] static_tokens[{index}].user: required")
    for key in config.api.keys:
        if len(key) < 8:
            raise ConfigError(f"{src}: [api] keys (or BROKER_API_KEY): each key needs at least 8 characters")
    if config.websocket.heartbeat_timeout <= 0 or config.websocket.heartbeat_interval <= 0:
        raise ConfigError(f"{src}: [websocket] heartbeat_interval and heartbeat_timeout must be positive")
    tls = config.server.tls
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ConfigError(f"{src}: [server.tls] cert_file and key_file go together")
    for key in ("cert_file", "key_file"):
        value = getattr(tls, key)
        if value and not Path(value).is_file():
            raise ConfigError(f"{src}: [server.tls] {key}: no file at {value!r}")
    cluster = config.cluster
    if cluster.redis_url and not cluster.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{src}: [cluster] redis_url (or BROKER_CLUSTER_REDIS_URL): must be a redis://, rediss:// "
                          "or unix:// URL")
    if not cluster.key_prefix or any(c in cluster.key_prefix for c in " \n{}"):
        raise ConfigError(f"{src}: [cluster] key_prefix: a non-empty name without spaces or braces")
    seen_paths = set(paths)
    for index, route in enumerate(config.proxy):
        where = f"{src}: [[proxy]] #{index + 1}"
        if not route.path.startswith("/") or route.path in seen_paths:
            raise ConfigError(f"{where} path: must start with '/' and differ from every other path, got {route.path!r}")
        seen_paths.add(route.path)
        if not route.upstream.startswith(("ws://", "wss://")):
            raise ConfigError(f"{where} upstream: must be a ws:// or wss:// URL, got {route.upstream!r}")
        if route.upstream_ca_file and not Path(route.upstream_ca_file).is_file():
            raise ConfigError(f"{where} upstream_ca_file: no file at {route.upstream_ca_file!r}")
    if config.store.url and not config.store.url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{src}: [store] url (or BROKER_STORE_URL): must be a postgresql:// URL")
    check_cluster_store(config)
    validate_webhooks(config)


# The events a [[webhook]] may ask for (docs/PROTOCOL.md, "Webhooks"); "*" is every one.
WEBHOOK_EVENTS = ("user.online", "user.offline", "chat.message", "chat.read", "job.occupied", "job.vacated")


def validate_webhooks(config: Config) -> None:
    """Each endpoint: an http(s) URL, known events, a unique name, at least one
    ``whsec_<base64>`` secret (unsigned webhooks are not offered); the lease outlasts an
    attempt. Called at load and when the broker starts (a Config built in code)."""
    import base64
    import binascii

    src = config.source
    if config.webhooks.lease <= config.webhooks.timeout:
        raise ConfigError(f"{src}: [webhooks] lease must be longer than timeout (an attempt ends within its lease)")
    names: set[str] = set()
    for index, endpoint in enumerate(config.webhook):
        where = f"{src}: [[webhook]] #{index + 1}"
        if not endpoint.url.startswith(("http://", "https://")) or any(c in endpoint.url for c in " \n\r"):
            raise ConfigError(f"{where} url: must be an http:// or https:// URL")
        if endpoint.key in names:
            raise ConfigError(f"{where} name: two endpoints are named {endpoint.key!r}")
        names.add(endpoint.key)
        for event in endpoint.events:
            if event != "*" and event not in WEBHOOK_EVENTS:
                raise ConfigError(f"{where} events: unknown event {event!r} (known: {', '.join(WEBHOOK_EVENTS)}, *)")
        if not endpoint.secrets:
            raise ConfigError(f"{where} secrets: at least one secret: whsec_ + base64 of 24 random bytes")
        for position, secret in enumerate(endpoint.secrets):
            try:
                ok = secret.startswith("whsec_") and len(base64.b64decode(secret[6:], validate=True)) >= 16
            except (binascii.Error, ValueError):
                ok = False
            if not ok:
                raise ConfigError(f"{where} secrets[{position}]: must be whsec_ and at least 16 bytes in base64")


def check_cluster_store(config: Config) -> None:
    """A node of a cluster must not keep its data in a file of its own: refused at load
    and again at start (an embedder's ``Config().replace(...)`` is not loaded)."""
    if config.cluster.redis_url and not config.store.url:
        raise ConfigError(
            f"{config.source}: [cluster] redis_url is set but [store] url is not: the nodes of a cluster share "
            "one PostgreSQL database (set [store] url / BROKER_STORE_URL to a postgresql:// URL); a node-local "
            "SQLite file ([store] path) would split the data between nodes"
        )


def validate_jwt(auth: AuthConfig, src: str = "<config>") -> None:
    """The JWT keys agree with the pinned algorithms: HMAC (HS*) verifies with
    ``jwt_secret`` only, public-key algorithms with ``jwt_public_key_file`` only.
    Called at load and again when the broker starts (a Config built in code)."""
    algorithms = auth.jwt_algorithms
    if not algorithms:
        raise ConfigError(f"{src}: [auth] jwt_algorithms: name at least one algorithm")
    for alg in algorithms:
        if alg not in _SUPPORTED_ALGORITHMS:
            raise ConfigError(
                f"{src}: [auth] jwt_algorithms: {alg!r} is not allowed (choose from {', '.join(_SUPPORTED_ALGORITHMS)}; 'none' never)"
            )
    uses_hmac = any(a.startswith("HS") for a in algorithms)
    uses_keys = any(not a.startswith("HS") for a in algorithms)
    if uses_hmac and uses_keys:
        raise ConfigError(f"{src}: [auth] jwt_algorithms: do not mix HMAC (HS*) with public-key algorithms")
    if uses_hmac and auth.jwt_public_key_file:
        raise ConfigError(
            f"{src}: [auth] jwt_public_key_file is set but jwt_algorithms = {list(algorithms)} is HMAC, which "
            "verifies with jwt_secret (BROKER_JWT_SECRET): remove jwt_public_key_file, or pin a public-key "
            "algorithm (RS256, ES256, EdDSA, ...)"
        )
    if uses_keys and not (auth.jwt_public_key_file or auth.jwks_url):
        raise ConfigError(
            f"{src}: [auth] jwt_public_key_file: required for jwt_algorithms = {list(algorithms)}, or jwks_url "
            "(a public-key algorithm verifies with a PEM public key or the identity provider's JWKS, not jwt_secret)"
        )
    if auth.jwks_url:
        _validate_jwks(auth, src, uses_hmac)
    if auth.jwt_previous_secrets and not uses_hmac:
        raise ConfigError(f"{src}: [auth] jwt_previous_secrets: only for HMAC (HS*) jwt_algorithms")
    for index, previous in enumerate(auth.jwt_previous_secrets):
        if len(previous) < 32:
            raise ConfigError(f"{src}: [auth] jwt_previous_secrets[{index}]: use at least 32 characters (RFC 7518)")
    if auth.hook_url:
        _validate_hook(auth, src)
    if auth.jwt_public_key_file and not Path(auth.jwt_public_key_file).is_file():
        raise ConfigError(f"{src}: [auth] jwt_public_key_file: no file at {auth.jwt_public_key_file!r}")
    if uses_hmac and auth.jwt_secret and len(auth.jwt_secret) < 32:
        raise ConfigError(f"{src}: [auth] jwt_secret (or BROKER_JWT_SECRET): use at least 32 characters (RFC 7518)")


_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def _is_loopback(host: str) -> bool:
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


def _validate_jwks(auth: AuthConfig, src: str, uses_hmac: bool) -> None:
    """``jwks_url``: https (http only on loopback: keys fetched in the clear could be
    swapped), with public-key algorithms, and cache bounds in order."""
    if uses_hmac:
        raise ConfigError(
            f"{src}: [auth] jwks_url is set but jwt_algorithms = {list(auth.jwt_algorithms)} is HMAC: pin the "
            "identity provider's algorithms, e.g. jwt_algorithms = [\"RS256\"]"
        )
    parts = urlsplit(auth.jwks_url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"{src}: [auth] jwks_url: give an https:// URL (got {auth.jwks_url!r})")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigError(f"{src}: [auth] jwks_url: use https (plain http only on loopback: keys fetched in the "
                          "clear could be replaced on the way)")
    if auth.jwks_cache_min > auth.jwks_cache_max:
        raise ConfigError(f"{src}: [auth] jwks_cache_min ({auth.jwks_cache_min:g}) is above jwks_cache_max "
                          f"({auth.jwks_cache_max:g})")


def _validate_hook(auth: AuthConfig, src: str) -> None:
    """``hook_url``: an http(s) URL; ``hook_headers``: header names."""
    parts = urlsplit(auth.hook_url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"{src}: [auth] hook_url: give an http:// or https:// URL of your backend")
    for name in auth.hook_headers:
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise ConfigError(f"{src}: [auth] hook_headers: {name!r} is not a header name")
