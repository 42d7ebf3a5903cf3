"""``serve(config)``: the whole broker in one nursery.

::

    async with trio.open_nursery() as nursery:
        broker = await nursery.start(serve, config)
        print(broker.port)
        await broker.publish("job-1", "job_status", {"status": "RUNNING"})
        ...
        nursery.cancel_scope.cancel()   # or: await broker.shutdown()

Shutdown (``shutdown()``, SIGTERM in ``broker serve``, or cancelling the nursery):
``/health`` turns 503 and new WebSocket upgrades are refused; after ``drain_grace``
the listeners close, every client is closed with 1001 (each close bounded by
``close_timeout``, all of it by ``drain_timeout``), rooms stop, and the store commits
what is queued before it closes.

Over 400 lines on purpose: this is the composition root, the one place that builds every
part and hands each the dependencies it uses; split, the wiring would be read in pieces
and each piece would need the whole broker again.
"""

from __future__ import annotations

import logging
import ssl
import warnings
from collections.abc import Callable
from typing import Any

import attrs
import trio

from actors import Restart, RestartIntensity, open_supervisor

from .auth.hook import AuthHook
from .auth.tokens import ApiKeys, Authenticator
from .chat.conversations import Conversations
from .chat.groups import Groups
from .chat.relay import ChatRelay
from .chat.replay import Pacing
from .chat.service import Chat
from .cluster import Backplane, Control, open_backplane, open_control
from .config.dev import LOOPBACK_ORIGINS
from .config.loader import Config, check_cluster_store, load_config, validate_webhooks
from .hub.connections import Hub
from .jobs.job_rooms import JobRooms
from .jobs.watchers import JobWatchers
from .observability.metrics import Metrics
from .observability.redact import install_filter
from .protocols import CloseCode, JobEvent, Limits, check_event_size
from .protocols.messages import validate_job_event
from .proxy.route import ProxyRoutes
from .session.commands import CommandDeps
from .session.connection import SessionDeps
from .session.login import Login
from .store import StoreError, make_store
from .transport.accept import accept_connections
from .transport.deflate import SharedDeflater
from .web.api import Api, ApiDeps
from .web.api_webhooks import WebhookRoutes
from .web.routes import Route
from .web.server import FrontDeps, HttpFront
from .web.stats import NodeStatsSource
from .webhooks import EventSink, NoWebhooks, Outbox, Sender, open_webhooks
from .webhooks.dead_nodes import sweep_dead_nodes
from .webhooks.dead_watchers import sweep_dead_watchers

log = logging.getLogger("broker")


def replay_pacing(config: Config) -> Pacing:
    """Offline replay windows: ``replay_window`` messages, a quarter of the outbox in
    bytes, each confirmed within ``heartbeat_timeout`` (else 4003)."""
    return Pacing(config.chat.replay_window, config.websocket.outbox_max_bytes // 4,
                  config.websocket.heartbeat_timeout)


class Broker:
    """The running broker's parts, and the one place that wires them: each component
    is given what it uses (:meth:`session_deps`, :meth:`api_deps`, :meth:`http_front`),
    never the Broker itself."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.hub = Hub()
        ws_config = config.websocket
        self.deflater = SharedDeflater(ws_config.compress_min_bytes) if ws_config.compression else None
        self.job_watchers = JobWatchers(config.jobs.max_jobs_per_identity)
        self.authenticator = Authenticator(config.auth)
        self.auth_hook = AuthHook(config.auth) if config.auth.hook_url else None
        self.api_keys = ApiKeys(config.api.keys)
        check_cluster_store(config)
        self.store = make_store(config.store)
        self.backplane: Backplane = open_backplane(config.cluster, self.store, self.hub,
                                                      config.jobs.idempotency_ttl)
        self.metrics.node.labels(self.backplane.node_id).set(1)
        self.control: Control = open_control(config.cluster, self.backplane, self.hub)
        self.node_stats = NodeStatsSource(
            self.backplane.node_id, self.metrics, connections=lambda: len(self.hub), users=self.hub.user_count,
            job_rooms=lambda: len(self.job_rooms) if self.job_rooms is not None else 0,
            conversations=lambda: len(self.conversations.rooms) if self.conversations is not None else 0,
        )
        validate_webhooks(config)
        webhooks = open_webhooks(config, self.store, self.metrics, self.backplane.instance, self.backplane.clustered)
        self.outbox: Outbox | None = webhooks[0] if webhooks else None
        self.webhook_sender: Sender | None = webhooks[1] if webhooks else None
        self.webhooks: EventSink = self.outbox if self.outbox is not None else NoWebhooks()
        self.node_stats.webhooks = self.outbox  # queue depth, failures, dead letters in /api/stats
        # user.online/offline: the backplane decides each transition (and, clustered, keeps it pending till recorded)
        self.backplane.logins.track_users = self.webhooks.wants("user.online") or self.webhooks.wants("user.offline")
        # resolves credentials now: fail fast
        self.proxy_routes = ProxyRoutes(config.proxy, self.metrics, config.websocket, config.server.close_timeout)
        self.decode_limits = Limits(config.chat.max_content_length, config.chat.history_max_limit)
        self.job_rooms: JobRooms = None  # type: ignore[assignment]  # set in run()
        self.conversations: Conversations = None  # type: ignore[assignment]  # set in run()
        self.chat: Chat = None  # type: ignore[assignment]  # set in run()
        self.groups: Groups = None  # type: ignore[assignment]  # set in run()
        self.draining = False
        self.ports: list[int] = []
        self._shutdown_requested = trio.Event()
        self.stopped = trio.Event()
        self._sse_open: Callable[[], int] = lambda: 0  # SSE streams open: the HTTP front's count, once made
        self.metrics.track(self.metrics.connections_open.labels("websocket"), lambda: len(self.hub) - self._sse_open())
        self.metrics.track(self.metrics.connections_open.labels("sse"), lambda: self._sse_open())

    async def run(self, task_status: trio.TaskStatus[BrokerHandle] = trio.TASK_STATUS_IGNORED) -> None:
        install_filter()
        config = self.config
        try:
            # a second broker on the same store is refused here, before anything serves
            async with self.store.claim(shared=self.backplane.clustered), open_supervisor("broker") as root:
                await root.start(
                    self.store.run, name="store", restart=Restart.TRANSIENT,
                    intensity=RestartIntensity(3, 30), escalate=True,
                )
                try:
                    async with open_supervisor("rooms") as rooms:
                        self.job_rooms = JobRooms(rooms, self.backplane.job_log, self.backplane.presence, config.jobs,
                                                  self.metrics, self.webhooks, self.backplane.occupancy)
                        relay = ChatRelay(self.backplane.chat_bus, self.hub, self.store)
                        self.conversations = Conversations(rooms, self.store, self.hub, config.chat, self.metrics,
                                                           config.websocket.outgoing_frame_limit, relay, self.webhooks)
                        self.chat = Chat(self.conversations, replay_pacing(config))
                        self.groups = Groups(self.conversations.rooms, self.store)
                        await self.conversations.start()
                        async with self.backplane.open(self.job_rooms, self.job_rooms, self.hub, relay), \
                                self.control.open(self.node_stats), trio.open_nursery() as ordering:
                            ordering.start_soon(relay.run)
                            if self.webhook_sender is not None:  # stops before the store closes
                                assert self.outbox is not None
                                try:
                                    await self.outbox.offline_after_restart()  # after a kill -9, before clients
                                except StoreError as exc:
                                    log.error("webhooks: user.offline after a restart not recorded: %s", exc)
                                await ordering.start(self.webhook_sender.run)
                            if self.backplane.clustered:  # with or without user webhooks: the sweep
                                # also takes a dead node's entries and sets out of Redis, which
                                # would otherwise stay there for good (one set per node killed)
                                ordering.start_soon(sweep_dead_nodes, self.backplane.logins, self.webhooks,
                                                    config.cluster.node_ttl / 5)
                            if self.backplane.clustered and (self.webhooks.wants("job.occupied")
                                                             or self.webhooks.wants("job.vacated")):
                                ordering.start_soon(sweep_dead_watchers, self.backplane.occupancy, self.webhooks,
                                                    config.cluster.node_ttl / 5)
                            await self._start_identity(ordering)
                            await self._serve_clients(task_status)
                            ordering.cancel_scope.cancel()
                        rooms.stop_all("shutdown")
                finally:
                    self.store.close()  # the store commits what is queued, then ends
        finally:
            self.stopped.set()

    async def _start_identity(self, nursery: trio.Nursery) -> None:
        """The JWKS fetcher (its first fetch done, whatever its outcome: bounded by
        ``jwks_fetch_timeout``) and the auth hook's connection pool, when configured."""
        if self.authenticator.jwks is not None:
            await nursery.start(self.authenticator.jwks.run)
        if self.auth_hook is not None:
            await nursery.start(self.auth_hook.run)

    async def _serve_clients(self, task_status: trio.TaskStatus[BrokerHandle]) -> None:
        config = self.config.server
        front = self.http_front()
        tcp_listeners = await trio.open_tcp_listeners(config.port, host=config.host or None)
        self.ports = sorted({listener.socket.getsockname()[1] for listener in tcp_listeners})
        listeners: list[trio.abc.Listener[Any]] = list(tcp_listeners)
        if config.tls.cert_file:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(config.tls.cert_file, config.tls.key_file)
            context.set_alpn_protocols(["http/1.1"])
            # the TLS handshake runs inside each connection's request-head timeout
            listeners = [trio.SSLListener(listener, context, https_compatible=True) for listener in tcp_listeners]
        accepting = trio.CancelScope()
        async with trio.open_nursery() as sessions:
            sessions.start_soon(self._accept, listeners, front, sessions, accepting)
            task_status.started(BrokerHandle(self))
            log.info("broker node %s (%s)", self.backplane.node_id,
                     "cluster" if self.backplane.clustered else "single node")
            log.info("broker listening on %s port %s", config.host, ", ".join(map(str, self.ports)))
            try:
                await self._shutdown_requested.wait()
                await self._drain(accepting)
            except trio.Cancelled:
                # Cancelled from outside (embedding), before or during a drain: sessions are
                # shielded, so close them with 1001 now; each close is bounded by close_timeout.
                self.draining = True
                self.hub.evict_all(CloseCode.GOING_AWAY, "server shutting down", "shutdown")
                raise
            sessions.cancel_scope.cancel()  # idle keep-alive HTTP connections; sessions are shielded and evicted

    async def _accept(self, listeners: list[trio.abc.Listener[Any]], front: HttpFront,
                      sessions: trio.Nursery, accepting: trio.CancelScope) -> None:
        with accepting:
            await accept_connections(front.handle_tcp, listeners, handler_nursery=sessions)

    async def _drain(self, accepting: trio.CancelScope) -> None:
        config = self.config.server
        self.draining = True
        log.info("draining: health is 503, new WebSocket connections refused")
        await trio.sleep(config.drain_grace)
        accepting.cancel()  # stop listening
        self.hub.evict_all(CloseCode.GOING_AWAY, "server shutting down", "shutdown")
        with trio.move_on_after(config.drain_timeout) as waited:
            await self.hub.wait_empty()
        if waited.cancelled_caught:
            log.warning("drain timeout: %d connections did not close in time", len(self.hub))
        log.info("drained")

    def session_deps(self) -> SessionDeps:
        """What sessions use (once the rooms and chat run)."""
        config = self.config
        login = Login(
            hub=self.hub, authenticator=self.authenticator, logins=self.backplane.logins, chat=self.chat,
            metrics=self.metrics, auth_timeout=config.websocket.auth_timeout,
            heartbeat_interval=config.websocket.heartbeat_interval,
            max_connections_per_user=config.limits.max_connections_per_user, single_login=config.chat.single_login,
            close_timeout=config.server.close_timeout, bans=self.control, webhooks=self.webhooks,
            jwt_leeway=config.auth.jwt_leeway, refresh_before=config.auth.refresh_before, hook=self.auth_hook,
        )
        commands = CommandDeps(job_rooms=self.job_rooms, chat=self.chat, online=self.backplane.logins,
                               jobs=config.jobs, watchers=self.job_watchers,
                               replay_inline_bytes=config.websocket.outbox_max_bytes // 2)
        return SessionDeps(
            hub=self.hub, login=login, commands=commands, chat=self.chat, metrics=self.metrics,
            decode_limits=self.decode_limits, websocket=config.websocket, limits=config.limits,
            chat_config=config.chat, close_timeout=config.server.close_timeout,
            deflater=self.deflater,
        )

    def api_deps(self) -> ApiDeps:
        """What the HTTP API uses (once the rooms and chat run)."""
        config = self.config
        return ApiDeps(
            api_keys=self.api_keys, job_rooms=self.job_rooms, chat=self.chat, groups=self.groups,
            draining=lambda: self.draining,
            publish_path=config.server.publish_path, api_prefix=config.server.api_prefix,
            extra_event_types=config.jobs.extra_event_types,
            outgoing_frame_limit=config.websocket.outgoing_frame_limit,
            job_log=self.backplane.job_log, control=self.control, history_size=config.jobs.history_size,
            max_content_length=config.chat.max_content_length, history_max_limit=config.chat.history_max_limit,
            clustered=self.backplane.clustered,
        )

    def http_front(self) -> HttpFront:
        """The HTTP front, given what it and its sessions use (once the rooms and chat run)."""
        config = self.config
        front = HttpFront(FrontDeps(
            server=config.server, limits=config.limits, browser=config.browser, single_login=config.chat.single_login,
            hub=self.hub, authenticator=self.authenticator, metrics=self.metrics, proxy_routes=self.proxy_routes,
            api=Api(self.api_deps(), self.webhook_routes()),
            sessions=self.session_deps(), draining=lambda: self.draining,
            health=self.health, bans=self.control, hook=self.auth_hook,
        ))
        self._sse_open = lambda: len(front.sse)
        return front

    def webhook_routes(self) -> list[Route]:
        """The dead-letter routes, when webhooks are configured (the admin page looks for
        them in the OpenAPI document)."""
        if self.outbox is None:
            return []
        return WebhookRoutes(self.config.server.api_prefix.rstrip("/"), self.outbox).routes()

    def health(self) -> tuple[int, dict[str, Any]]:
        """``/health``: 503 while draining or while the backplane is unreachable (so a
        load balancer moves traffic elsewhere), with the reason; in a cluster, the node id.
        With ``[auth] jwks_url``, the key set's state (public: kids, age, last error)."""
        node: dict[str, Any] = {"node": self.backplane.node_id} if self.backplane.clustered else {}
        if self.authenticator.jwks is not None:
            node["jwks"] = self.authenticator.jwks.state().as_dict()
        if self.draining:
            return 503, {"status": "draining", **node}
        redis = self.backplane.redis_location()  # the master in use and, with Sentinel, the sentinels
        if redis is not None:
            node["redis"] = redis
        problem = self.backplane.problem()
        if problem is not None:
            return 503, {"status": "unavailable", "reason": problem, **node}
        return 200, {"status": "ok", **node}

    def webhook_stats(self) -> dict[str, Any]:
        """Webhook queue depth and failures for ``/api/stats`` (sync, no query):
        ``{"endpoints": [...], "pending", "dead", "delivered", "failedAttempts",
        "deadLettered", "dropped"}``; all zero without ``[[webhook]]``."""
        if self.outbox is None:
            return {"endpoints": [], "pending": 0, "dead": 0, "delivered": 0, "failedAttempts": 0,
                    "deadLettered": 0, "dropped": 0}
        return self.outbox.stats()

    def request_shutdown(self) -> None:
        """Start a graceful drain (sync, signal-handler friendly)."""
        self._shutdown_requested.set()


@attrs.define
class BrokerHandle:
    """What ``nursery.start(serve, config)`` returns."""

    broker: Broker

    @property
    def config(self) -> Config:
        return self.broker.config

    @property
    def ports(self) -> list[int]:
        return list(self.broker.ports)

    @property
    def port(self) -> int:
        return self.broker.ports[0]

    @property
    def metrics(self) -> Any:
        return self.broker.metrics

    @property
    def groups(self) -> Groups:
        """Chat groups for embedders: ``create_group``, ``add_members``, ``remove_members``,
        ``group``, ``groups_of``, ``delete_group``."""
        return self.broker.groups

    @property
    def chat(self) -> Groups:
        """Deprecated: the same as :attr:`groups` (its name before chat was split); warns
        with DeprecationWarning so embedders move before it goes."""
        warnings.warn("BrokerHandle.chat is deprecated: use BrokerHandle.groups", DeprecationWarning, stacklevel=2)
        return self.broker.groups

    def url(self, path: str | None = None, scheme: str | None = None) -> str:
        """A URL to reach the broker locally (``wss://`` when TLS is on)."""
        if scheme is None:
            scheme = "wss" if self.broker.config.server.tls.cert_file else "ws"
        host = self.broker.config.server.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"{scheme}://{host}:{self.port}{path if path is not None else self.broker.config.server.ws_path}"

    async def publish(self, job_id: str, type: str, data: dict[str, Any] | None = None) -> int:
        """Publish one job event (validated as over HTTP); returns its seq once stored."""
        config = self.broker.config
        event = validate_job_event(
            {"jobId": job_id, "type": type, "data": data or {}}, config.jobs.extra_event_types,
            config.websocket.outgoing_frame_limit,
        )
        return await self.broker.job_rooms.publish(event)

    async def publish_events(self, events: list[JobEvent]) -> list[int]:
        """Publish in order; ProtocolError (MESSAGE_TOO_BIG) before anything is
        published if one would be sent as more than ``max_outgoing_frame_bytes``."""
        for event in events:
            check_event_size(event, self.broker.config.websocket.outgoing_frame_limit)
        return await self.broker.job_rooms.publish_many(events)

    async def shutdown(self) -> None:
        """Drain gracefully and wait until the broker has stopped."""
        self.broker.request_shutdown()
        await self.broker.stopped.wait()


def start_banner(handle: BrokerHandle, *, dev_file: str | None = None, notes: tuple[str, ...] = ()) -> str:
    """What a person starting the broker needs: its URLs, how clients authenticate and
    where the data goes. Secrets are shown only with ``dev_file`` (development: they are
    the publicly known ones ``make run`` uses), never otherwise."""
    from .store.postgres import display_url

    config = handle.config
    server, auth = config.server, config.auth
    http = handle.url("", "https" if server.tls.cert_file else "http")
    rows = [("WebSocket", handle.url()), ("health", http + server.health_path),
            ("metrics", http + server.metrics_path + ("  (Bearer metrics token)" if server.metrics_token else "")),
            ("publish", f"POST {http}{server.publish_path}  (Bearer API key)"),
            ("index", http + "/")]
    if config.browser.console_path:
        rows.insert(1, ("console", http + config.browser.console_path))
    if config.browser.admin_path:
        rows.insert(2, ("admin", http + config.browser.admin_path + "  (operators: asks for the API key)"))
    jwt = "off"
    if auth.jwt_secret or auth.jwt_public_key_file:
        jwt = ", ".join(auth.jwt_algorithms) + "; without a jobs claim a JWT joins " + (
            ", ".join(auth.jwt_default_jobs) if auth.jwt_default_jobs else "no job ([auth] jwt_default_jobs)")
    if dev_file is not None:
        title = "trio-broker: DEVELOPMENT settings (publicly known secrets: for development only, never production)"
        rows += [("token", f"{auth.env_token}  (static token: joins every job; chat needs a JWT)" if auth.env_token
                  else "none"),
                 ("JWT secret", f"{auth.jwt_secret}  (`broker token --sub alice` signs a user token: jobs and chat)"
                  if auth.jwt_secret else "none"),
                 ("API key", config.api.keys[0] if config.api.keys else "none"),
                 ("JWT", jwt),
                 ("origins", "pages on " + ", ".join(
                     [origin for origin in config.limits.allowed_origins if origin not in LOOPBACK_ORIGINS]
                     + ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"]) + " may connect"),
                 ("CLI", f"{dev_file}: `broker token|publish|groups` in this folder use it")]
    else:
        title = "trio-broker"
        static = len(auth.static_tokens) + (1 if auth.env_token else 0)
        rows += [("auth", f"JWT {jwt}; {static} static token(s); {len(config.api.keys)} API key(s)"),
                 ("origins", ", ".join(config.limits.allowed_origins) or "same origin only ([limits] allowed_origins)")]
    rows.append(("data", f"PostgreSQL {display_url(config.store.url)}" if config.store.url
                 else f"SQLite {config.store.path}"))
    width = max(len(name) for name, _ in rows)
    lines = [title] + [f"  {name.ljust(width)}  {value}" for name, value in rows] + [f"  {note}" for note in notes]
    return "\n".join(lines)


async def serve(config: Config | None = None, *, task_status: trio.TaskStatus[BrokerHandle] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a broker until shut down or cancelled. With ``nursery.start`` it returns a
    :class:`BrokerHandle` once listening. ``config`` defaults to the embedded defaults
    plus environment overrides."""
    broker = Broker(config if config is not None else load_config(None))
    await broker.run(task_status)
