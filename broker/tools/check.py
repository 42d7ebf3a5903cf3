"""``broker check-config``: validate a configuration, reach what it depends on, and say
what would surprise its first user.

The summary goes to stdout; the verdict is its last line. Problems (a store or Redis
that does not answer) make it ``config NOT OK`` and exit 1; warnings (nobody can
authenticate, a ``BROKER_*`` variable that sets nothing) leave it OK unless
``strict``, which then exits 1 too. A configuration that does not load never gets
here: the loader's ConfigError is exit 2.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TextIO

import trio

from ..config.loader import Config, describe_unknown, unknown_environment
from ..observability.redact import redact


def postgres_status(url: str, timeout: float) -> tuple[bool, str]:
    """(reachable, one line naming the server without its password)."""
    from ..store import StoreError
    from ..store.pg_schema import SCHEMA_VERSION
    from ..store.postgres import display_url, probe

    where = f"PostgreSQL at {display_url(url)}"
    try:
        version, schema = probe(url, timeout)
    except StoreError as exc:
        return False, f"{where}: UNREACHABLE: {exc}"
    state = "not created yet (the broker creates it at start)" if schema == 0 else f"schema version {schema}"
    if schema > SCHEMA_VERSION:
        state += f", newer than this broker's {SCHEMA_VERSION}"
    return True, f"{where}: reachable, server {version}, {state}"


def _redis_status(config: Config) -> tuple[bool, str]:
    """(reachable, one line): the cluster's Redis, its version and persistence."""
    from ..cluster import BackplaneUnavailable
    from ..cluster.redis import probe_redis

    try:
        detail = trio.run(probe_redis, config.cluster)
    except BackplaneUnavailable as exc:
        return False, f"Redis UNREACHABLE: {exc}"
    return True, f"node {config.cluster.node_id or '(random at start)'}; {detail}"


def jwks_status(config: Config) -> tuple[bool, str]:
    """Fetch ``[auth] jwks_url`` once, as the broker does at start: (fetched, its key ids
    and cache lifetime, or why not)."""
    from ..auth.jwks import JwksKeys

    auth = config.auth
    keys = JwksKeys(auth.jwks_url, auth.jwt_algorithms, min_refetch=auth.jwks_min_refetch,
                    cache_min=auth.jwks_cache_min, cache_max=auth.jwks_cache_max, timeout=auth.jwks_fetch_timeout)
    trio.run(keys.refresh)
    state = keys.state()
    if state.error is not None:
        return False, f"{auth.jwks_url}: not fetched: {state.error}"
    return True, (f"{auth.jwks_url}: {len(state.kids)} key id(s): {', '.join(state.kids)} (fetched now; refetched "
                  f"after {keys.cache_lifetime:g}s, on an unknown kid at most every {auth.jwks_min_refetch:g}s)")


def authentication_warning(config: Config) -> str | None:
    """A warning when no WebSocket client and no backend could authenticate."""
    auth = config.auth
    if (auth.jwt_secret or auth.jwt_public_key_file or auth.jwks_url or auth.hook_url or auth.static_tokens
            or auth.env_token or config.api.keys):
        return None
    return ("nothing can authenticate: no static token (WS_AUTH_TOKEN, [auth] static_tokens), no JWT key "
            "(BROKER_JWT_SECRET, [auth] jwt_public_key_file) and no API key (BROKER_API_KEY): every WebSocket "
            "client and every publish will be refused")


def check_config(config: Config, *, strict: bool = False, environ: Mapping[str, str] | None = None,
                 out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print the summary (stdout) and the verdict (a problem's on stderr); 0 OK, 1 a
    problem (or, ``strict``, a warning)."""
    out = out or sys.stdout
    err = err or sys.stderr
    from ..auth.tokens import Authenticator
    from ..proxy.route import resolve_headers

    Authenticator(config.auth)  # reads the public key file, if any
    for route in config.proxy:
        resolve_headers(route)  # a missing {env:...} or {file:...} credential is an error here, not at start
    server = config.server
    lines = [f"  listen {server.host}:{server.port}  ws {server.ws_path}  health {server.health_path}  "
             f"metrics {server.metrics_path}{' (token)' if server.metrics_token else ''}  "
             f"publish {server.publish_path}"]
    problems: list[str] = []
    warnings: list[str] = []
    if config.store.url:
        reachable, line = postgres_status(config.store.url, config.store.connect_timeout)
        lines.append(f"  store {line}")
        if not reachable:
            problems.append(f"{line} (check [store] url / BROKER_STORE_URL and that PostgreSQL runs)")
    else:
        lines.append(f"  store {config.store.path} (synchronous={config.store.synchronous})")
    auth = config.auth
    jwt_mode = ", ".join(auth.jwt_algorithms) if (auth.jwt_secret or auth.jwt_public_key_file or auth.jwks_url) else "off"
    static = len(auth.static_tokens) + (1 if auth.env_token else 0)
    lines.append(f"  auth: JWT {jwt_mode}; {static} static token(s); {len(config.api.keys)} API key(s)")
    if auth.jwt_previous_secrets:
        lines.append(f"  auth: {len(auth.jwt_previous_secrets)} previous JWT secret(s), verification only")
    if auth.hook_url:
        lines.append(f"  auth hook: {redact(auth.hook_url)} (headers: {', '.join(auth.hook_headers)}; "
                     f"timeout {auth.hook_timeout:g}s, cache {auth.hook_cache_ttl:g}s)")
    if auth.jwks_url:
        fetched, line = jwks_status(config)
        lines.append(f"  jwks: {line}")
        if not fetched:
            problems.append(f"JWKS {line} (JWT connections would get 1013 / 503 until it answers)")
    for route in config.proxy:
        lines.append(f"  proxy {route.path} -> {route.upstream} (headers: {', '.join(route.headers) or 'none'})")
    if server.tls.cert_file:
        lines.append(f"  TLS: {server.tls.cert_file}")
    if config.cluster.enabled:
        reachable, line = _redis_status(config)
        lines.append(f"  cluster: {line}")
        if not reachable:
            keys = ("redis_sentinels / BROKER_CLUSTER_REDIS_SENTINELS, redis_master_name and that the sentinels "
                    "and the master run" if config.cluster.uses_sentinel else
                    "redis_url / BROKER_CLUSTER_REDIS_URL and that Redis runs")
            problems.append(f"{line} (check [cluster] {keys})")
        elif "appendfsync=always" not in line:
            warnings.append("Redis should run with appendonly yes, appendfsync always (docs/CLUSTER.md)")
    else:
        lines.append("  cluster: off (single node)")
    missing_auth = authentication_warning(config)
    if missing_auth:
        warnings.append(missing_auth)
    warnings.extend(describe_unknown(name, closest) for name, closest in unknown_environment(environ))
    print(f"config {config.source}", file=out)
    for line in lines:
        print(line, file=out)
    for warning in warnings:
        print(f"  warning: {warning}", file=out)
    out.flush()
    for problem in problems:
        print(f"  problem: {problem}", file=err)
    if problems:
        print(f"config NOT OK: {config.source}: {len(problems)} problem(s)", file=err)
        return 1
    if warnings and strict:
        print(f"config NOT OK (--strict): {config.source}: {len(warnings)} warning(s)", file=err)
        return 1
    print(f"config OK: {config.source}" + (f" ({len(warnings)} warning(s))" if warnings else ""), file=out)
    return 0
