"""The configuration's sections: one frozen attrs class per ``[section]`` of config.toml,
each key with its embedded default and its bounds (``low``/``high``/``choices``, read
by the loader), and :class:`Config`, all of them together.

Reading config.toml and the environment into these, and the checks that involve more
than one key, are in :mod:`broker.config.loader` (which every other module imports these
names from as well).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs


def _field(default: Any, *, low: float | None = None, high: float | None = None,
           choices: tuple[Any, ...] | None = None, secret: bool = False, factory: Any = None) -> Any:
    """A key with its default; the loader checks a value against ``low``/``high``/``choices``
    and shows a ``secret`` one as ``***`` in its errors."""
    metadata = {"low": low, "high": high, "choices": choices, "secret": secret}
    if factory is not None:
        return attrs.field(factory=factory, metadata=metadata)
    return attrs.field(default=default, metadata=metadata)


@attrs.frozen
class TlsConfig:
    cert_file: str = _field("")
    key_file: str = _field("")


@attrs.frozen
class ServerConfig:
    host: str = _field("0.0.0.0")
    port: int = _field(8080, low=0, high=65535)
    ws_path: str = _field("/ws")
    health_path: str = _field("/health")
    metrics_path: str = _field("/metrics")
    publish_path: str = _field("/api/publish")
    api_prefix: str = _field("/api")
    request_head_timeout: float = _field(10.0, low=0.1)
    max_request_head_bytes: int = _field(16384, low=1024, high=1 << 20)
    max_body_bytes: int = _field(1 << 20, low=1024)
    keepalive_timeout: float = _field(15.0, low=0.1)
    close_timeout: float = _field(5.0, low=0.01)
    drain_grace: float = _field(0.0, low=0.0)
    drain_timeout: float = _field(10.0, low=0.1)
    trusted_proxies: tuple[str, ...] = _field((), factory=tuple)
    metrics_token: str = _field("", secret=True)  # when set, GET metrics_path needs Authorization: Bearer <it>
    tls: TlsConfig = attrs.field(factory=TlsConfig)
    send_timeout: float = _field(10.0, low=0.1)  # an HTTP answer's write with no progress this long: closed


@attrs.frozen
class WebSocketConfig:
    heartbeat_interval: float = _field(30.0, low=0.01)
    heartbeat_timeout: float = _field(30.0, low=0.01)
    idle_timeout: float = _field(600.0, low=0.01)
    auth_timeout: float = _field(10.0, low=0.01)
    max_frame_bytes: int = _field(65536, low=256)
    max_outgoing_frame_bytes: int = _field(262_144, low=4096)
    outbox_max_bytes: int = _field(1 << 20, low=4096)
    receive_buffer_bytes: int = _field(65536, low=1024)
    subprotocols: tuple[str, ...] = _field((), factory=tuple)
    compression: bool = _field(True)  # permessage-deflate on /ws, each broadcast compressed once
    compress_min_bytes: int = _field(1024, low=0)  # frames smaller than this go out plain

    @property
    def outgoing_frame_limit(self) -> int:
        """The largest frame the broker sends: max_outgoing_frame_bytes, at most the outbox."""
        return min(self.max_outgoing_frame_bytes, self.outbox_max_bytes)


@attrs.frozen
class StaticToken:
    token: str = _field("", secret=True)
    user: str = _field("")
    jobs: tuple[str, ...] = _field((), factory=tuple)
    max_connections: int = _field(0, low=0)  # 0: only the global limits


@attrs.frozen
class AuthConfig:
    jwt_algorithms: tuple[str, ...] = _field(("HS256",), factory=lambda: ("HS256",))
    jwt_secret: str = _field("", secret=True)
    jwt_public_key_file: str = _field("")
    jwt_audience: str = _field("")
    jwt_issuer: str = _field("")
    jwt_leeway: float = _field(30.0, low=0.0, high=3600.0)
    jwt_default_jobs: tuple[str, ...] = _field((), factory=tuple)
    static_tokens: tuple[StaticToken, ...] = _field((), factory=tuple)
    env_token: str = _field("", secret=True)
    env_token_user: str = _field("ws-client")
    env_token_jobs: tuple[str, ...] = _field(("*",), factory=lambda: ("*",))
    env_token_max_connections: int = _field(0, low=0)
    # HMAC rotation: secrets that still verify tokens (never sign); the new one is jwt_secret
    jwt_previous_secrets: tuple[str, ...] = _field((), factory=tuple, secret=True)
    # keys from an identity provider's JWKS document (broker/auth/jwks.py)
    jwks_url: str = _field("")
    jwks_min_refetch: float = _field(30.0, low=0.0, high=86_400.0)  # unknown kid: at most one fetch per this
    jwks_cache_min: float = _field(60.0, low=0.0, high=86_400.0)  # Cache-Control max-age is kept within these
    jwks_cache_max: float = _field(3600.0, low=1.0, high=7 * 86_400.0)
    jwks_fetch_timeout: float = _field(5.0, low=0.1, high=120.0)
    # token_expiring this long before a connection's token expires (docs/PROTOCOL.md section 2)
    refresh_before: float = _field(60.0, low=0.0, high=86_400.0)
    # the auth hook: the app's backend decides who a connection without a token is (broker/auth/hook.py)
    hook_url: str = _field("")
    hook_headers: tuple[str, ...] = _field(("Cookie", "Authorization"), factory=lambda: ("Cookie", "Authorization"))
    hook_timeout: float = _field(3.0, low=0.1, high=60.0)
    hook_max_concurrency: int = _field(32, low=1, high=10_000)
    hook_cache_ttl: float = _field(10.0, low=0.0, high=3600.0)
    hook_cache_size: int = _field(10_000, low=1, high=1_000_000)


@attrs.frozen
class ApiConfig:
    keys: tuple[str, ...] = _field((), factory=tuple, secret=True)


@attrs.frozen
class JobsConfig:
    history_size: int = _field(1000, low=1, high=1_000_000)
    room_idle_timeout: float = _field(60.0, low=0.01)
    room_inbox_size: int = _field(1024, low=1)
    publish_batch_max: int = _field(256, low=1)
    max_jobs_per_connection: int = _field(100, low=1)
    max_rooms: int = _field(10_000, low=1)
    publish_room_share: float = _field(0.1, low=0.0, high=0.9)  # the last share of max_rooms only publishes start
    max_jobs_per_identity: int = _field(1000, low=1)  # distinct jobs a user (or a static token per address) watches
    presence_list_max: int = _field(100, low=1, high=10_000)
    idempotency_ttl: float = _field(300.0, low=0.0, high=30 * 86_400.0)
    extra_event_types: tuple[str, ...] = _field((), factory=tuple)

    @property
    def rooms_reserved_for_publishes(self) -> int:
        """Rooms a join never starts, kept for publishes (the backend's way in)."""
        return int(self.max_rooms * self.publish_room_share)


@attrs.frozen
class ChatConfig:
    single_login: bool = _field(True)
    max_content_length: int = _field(4096, low=1, high=1 << 20)
    offline_cap: int = _field(500, low=1, high=100_000)
    history_max_limit: int = _field(200, low=1, high=10_000)
    room_idle_timeout: float = _field(60.0, low=0.01)
    room_inbox_size: int = _field(1024, low=1)
    send_batch_max: int = _field(256, low=1)
    confirm_delay: float = _field(0.05, low=0.0, high=60.0)
    held_max: int = _field(10_000, low=1)
    replay_window: int = _field(100, low=1, high=100_000)
    max_rooms: int = _field(10_000, low=1)
    broadcast_senders: tuple[str, ...] = _field(("*",), factory=lambda: ("*",))


@attrs.frozen
class LimitsConfig:
    allowed_origins: tuple[str, ...] = _field((), factory=tuple)
    max_connections: int = _field(20_000, low=1)
    max_connections_per_ip: int = _field(256, low=1)
    max_connections_per_user: int = _field(100, low=1)
    max_http_connections: int = _field(1024, low=1)
    max_http_connections_per_ip: int = _field(128, low=1)
    message_rate: float = _field(20.0, low=0.01)
    message_burst: int = _field(40, low=1)
    rate_limit_strikes: int = _field(10, low=1)
    rate_limit_window: float = _field(10.0, low=0.01)


@attrs.frozen
class ProxyRoute:
    path: str = _field("")
    upstream: str = _field("")
    headers: dict[str, str] = attrs.field(factory=dict, metadata={"secret": True})
    forward_query: tuple[str, ...] = _field((), factory=tuple)
    forward_subprotocols: tuple[str, ...] = _field((), factory=tuple)
    allow_client_api_key: bool = _field(False)
    connect_timeout: float = _field(10.0, low=0.1)
    max_session_seconds: float = _field(3600.0, low=1.0)
    max_sessions_per_user: int = _field(2, low=1)
    max_message_bytes: int = _field(1 << 20, low=256)
    buffer_messages: int = _field(16, low=1)
    upstream_ca_file: str = _field("")


@attrs.frozen
class StoreConfig:
    path: str = _field("data/broker.sqlite3")
    synchronous: str = _field("NORMAL", choices=("OFF", "NORMAL", "FULL", "EXTRA"))
    batch_max: int = _field(500, low=1)
    inbox_size: int = _field(4096, low=1)
    url: str = _field("", secret=True)  # postgresql://... selects PostgreSQL instead of the SQLite file at `path`
    pool_size: int = _field(8, low=2, high=200)
    connect_timeout: float = _field(10.0, low=0.1)


@attrs.frozen
class ClusterConfig:
    redis_url: str = _field("", secret=True)  # may carry a password
    node_id: str = _field("")
    key_prefix: str = _field("broker")
    node_ttl: float = _field(30.0, low=1.0, high=3600.0)
    connect_timeout: float = _field(2.0, low=0.05)
    command_timeout: float = _field(5.0, low=0.05)
    reconnect_max_delay: float = _field(5.0, low=0.05)
    # Redis through Sentinel, instead of redis_url (exactly one of the two): the sentinels
    # ("host:port") and the name of the master they watch; the node follows failovers
    redis_sentinels: tuple[str, ...] = _field((), factory=tuple)
    redis_master_name: str = _field("")
    # the master's credentials, database and TLS in sentinel mode (redis_url carries them otherwise)
    redis_username: str = _field("")
    redis_password: str = _field("", secret=True)
    redis_db: int = _field(0, low=0, high=100_000)
    redis_tls: bool = _field(False)
    # Sentinel's own credentials and TLS (they may differ from the master's)
    sentinel_username: str = _field("")
    sentinel_password: str = _field("", secret=True)
    sentinel_tls: bool = _field(False)
    tls_ca_file: str = _field("")  # CA bundle for redis_tls / sentinel_tls; "" = the system's

    # replicas that must have a write (Redis WAIT) before it is acknowledged; 0: no WAIT
    min_replicas: int = _field(0, low=0, high=16)
    replica_timeout: float = _field(1.0, low=0.001, high=60.0)  # seconds a WAIT may take (then 503)

    @property
    def enabled(self) -> bool:
        """This node is part of a cluster: Redis by URL or through Sentinel."""
        return bool(self.redis_url or self.redis_sentinels)

    @property
    def uses_sentinel(self) -> bool:
        """Redis is found through Sentinel (``redis_sentinels``), not at ``redis_url``."""
        return bool(self.redis_sentinels)


@attrs.frozen
class BrowserConfig:
    console_path: str = _field("/console")
    client_path: str = _field("/client")
    cache_max_age: int = _field(300, low=0, high=31_536_000)
    admin_path: str = _field("/admin")  # the operator's page (server API with the key typed in); "" turns it off
    sse_path: str = _field("/sse")  # the fallback transport: GET streams, POST sends; "" turns it off


@attrs.frozen
class LogConfig:
    level: str = _field("INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


@attrs.frozen
class Config:
    server: ServerConfig = attrs.field(factory=ServerConfig)
    websocket: WebSocketConfig = attrs.field(factory=WebSocketConfig)
    auth: AuthConfig = attrs.field(factory=AuthConfig)
    api: ApiConfig = attrs.field(factory=ApiConfig)
    jobs: JobsConfig = attrs.field(factory=JobsConfig)
    chat: ChatConfig = attrs.field(factory=ChatConfig)
    limits: LimitsConfig = attrs.field(factory=LimitsConfig)
    proxy: tuple[ProxyRoute, ...] = attrs.field(factory=tuple)
    store: StoreConfig = attrs.field(factory=StoreConfig)
    cluster: ClusterConfig = attrs.field(factory=ClusterConfig)
    browser: BrowserConfig = attrs.field(factory=BrowserConfig)
    log: LogConfig = attrs.field(factory=LogConfig)
    webhooks: WebhooksConfig = attrs.field(factory=lambda: WebhooksConfig())
    webhook: tuple[WebhookEndpoint, ...] = attrs.field(factory=tuple)
    source: str = attrs.field(default="<defaults>", eq=False)

    def replace(self, **sections: Any) -> Config:
        """A copy with whole sections or keys changed: ``replace(server={"port": 0})``;
        nested tables merge too: ``replace(server={"tls": {"cert_file": ...}})``."""
        return _merge(self, sections)


def _merge(instance: Any, changes: Mapping[str, Any]) -> Any:
    merged = {}
    for name, value in changes.items():
        current = getattr(instance, name)
        merged[name] = _merge(current, value) if isinstance(value, Mapping) and attrs.has(type(current)) else value
    return attrs.evolve(instance, **merged)


# -- webhooks (appended; broker/webhooks) ---------------------------------------


@attrs.frozen
class WebhookEndpoint:
    """One ``[[webhook]]``: where events go, which ones, and the secrets they are signed
    with (Standard Webhooks: ``whsec_<base64>``; several while rotating: each signs)."""

    url: str = _field("")
    name: str = _field("")  # how the outbox and the API name it; default: the url
    events: tuple[str, ...] = _field(("*",), factory=lambda: ("*",))
    secrets: tuple[str, ...] = _field((), factory=tuple, secret=True)

    @property
    def key(self) -> str:
        return self.name or self.url


@attrs.frozen
class WebhooksConfig:
    """``[webhooks]``: how every endpoint is delivered to (the outbox and the sender)."""

    timeout: float = _field(10.0, low=0.1, high=300.0)  # one attempt, connect to last byte
    max_concurrency: int = _field(16, low=1, high=1024)  # requests in flight per node, all endpoints
    retry_base: float = _field(1.0, low=0.01)  # full jitter: a retry waits U(0, min(retry_max, base * 2**attempt))
    retry_max: float = _field(300.0, low=0.01)
    max_age: float = _field(86_400.0, low=1.0)  # then the event is dead-lettered
    outbox_max: int = _field(100_000, low=1)  # rows per endpoint (pending + dead); beyond, new events are dropped
    poll_interval: float = _field(1.0, low=0.01)  # looks for due events (other nodes', retries) at least this often
    lease: float = _field(60.0, low=0.1)  # a claimed event is another node's to send after this long
    max_response_bytes: int = _field(65_536, low=1024)  # read of a receiver's answer; the rest is ignored
