"""The checks a configuration must pass that involve more than one key: paths that must
differ, JWT keys that agree with the pinned algorithms (and the JWKS and auth-hook
settings), webhook endpoints, a cluster's store. :func:`~broker.config.loader.load_config`
runs them on every load; the broker runs the ones an embedder's code-built Config could
skip again at start. Each raises :class:`ConfigError` naming the file, section and key."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError
from .sections import AuthConfig, Config

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
    validate_sentinel(config)
    if not cluster.key_prefix or any(c in cluster.key_prefix for c in " \n{}"):
        raise ConfigError(f"{src}: [cluster] key_prefix: a non-empty name without spaces or braces")
    if cluster.min_replicas and cluster.replica_timeout >= cluster.command_timeout:
        raise ConfigError(f"{src}: [cluster] replica_timeout must be shorter than command_timeout (a WAIT is a "
                          "command: it must end before the command's own deadline)")
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


_SENTINEL_ONLY = ("redis_username", "redis_password", "redis_db", "redis_tls", "sentinel_username",
                  "sentinel_password", "sentinel_tls", "tls_ca_file")


def validate_sentinel(config: Config) -> None:
    """``redis_url`` or ``redis_sentinels`` + ``redis_master_name``, exactly one way;
    each sentinel a ``host:port``; the master's settings only where they are used.
    Errors name keys, never a value of a secret one."""
    src, cluster = config.source, config.cluster
    if cluster.redis_url and (cluster.redis_sentinels or cluster.redis_master_name):
        raise ConfigError(f"{src}: [cluster] set either redis_url (BROKER_CLUSTER_REDIS_URL) or redis_sentinels + "
                          "redis_master_name (BROKER_CLUSTER_REDIS_SENTINELS, BROKER_CLUSTER_REDIS_MASTER_NAME), "
                          "not both")
    if bool(cluster.redis_sentinels) != bool(cluster.redis_master_name):
        missing = "redis_master_name (BROKER_CLUSTER_REDIS_MASTER_NAME)" if cluster.redis_sentinels else \
            "redis_sentinels (BROKER_CLUSTER_REDIS_SENTINELS)"
        raise ConfigError(f"{src}: [cluster] redis_sentinels and redis_master_name go together: {missing} is missing")
    for entry in cluster.redis_sentinels:
        if parse_host_port(entry) is None:
            raise ConfigError(f"{src}: [cluster] redis_sentinels: each entry is host:port (port 1-65535), "
                              f"got {entry!r}")
    if cluster.redis_master_name and any(c in cluster.redis_master_name for c in " \n\r"):
        raise ConfigError(f"{src}: [cluster] redis_master_name: a name without spaces")
    if not cluster.redis_sentinels:
        defaults = type(cluster)()
        given = [key for key in _SENTINEL_ONLY if getattr(cluster, key) != getattr(defaults, key)]
        if given:
            raise ConfigError(f"{src}: [cluster] {', '.join(given)}: only with redis_sentinels (with redis_url, "
                              "the URL carries the credentials, database and TLS: rediss://user:password@host/db)")
    if cluster.tls_ca_file and not Path(cluster.tls_ca_file).is_file():
        raise ConfigError(f"{src}: [cluster] tls_ca_file: no file at {cluster.tls_ca_file!r}")


def parse_host_port(entry: str) -> tuple[str, int] | None:
    """``host:port`` (``[v6]:port`` too) as (host, port), or None if it is not one."""
    host, colon, port = entry.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or any(c in host for c in " /@") or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def check_cluster_store(config: Config) -> None:
    """A node of a cluster must not keep its data in a file of its own: refused at load
    and again at start (an embedder's ``Config().replace(...)`` is not loaded)."""
    if config.cluster.enabled and not config.store.url:
        key = "redis_sentinels" if config.cluster.uses_sentinel else "redis_url"
        raise ConfigError(
            f"{config.source}: [cluster] {key} is set but [store] url is not: the nodes of a cluster share "
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
