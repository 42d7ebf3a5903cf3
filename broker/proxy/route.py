"""Authenticating proxy routes (docs/PROTOCOL.md section 5).

A connection on a proxy route composes a :class:`ProxyRelay` in place of the broker
protocol; its nursery also holds the *upstream leg*. The relay authenticates the
client as on ``/ws``, opens the route's upstream WebSocket with the credentials the
server holds (never the client's, unless the route enables ``allow_client_api_key``),
then relays messages both ways, unchanged and in order:

* each direction is one task that waits on its destination: a slow upstream stops
  the broker from reading the client, a slow client stops it reading the upstream
  (trio-websocket's queue on the upstream leg and the wires keep memory bounded);
* when either side closes, the other is closed with the same code (1005/1006, which
  cannot be sent, become 1000 and 4004/1001) within ``close_timeout``;
* an unreachable or refusing upstream closes the client with 4004 after an
  ``UPSTREAM_UNAVAILABLE`` error saying which;
* both legs are pinged every ``heartbeat_interval``;
* evicting the connection (shutdown, heartbeat, ``max_session_seconds``) cancels
  the relay, upstream leg included: nothing to remember, nothing to leak.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit

import trio
import trio_websocket

from ..auth.tokens import LoginKey
from ..config.loader import ConfigError, ProxyRoute
from ..protocols import CloseCode, ErrorCode, UpgradeRequest
from ..transport.websocket import ConnectionClosed, ServerWebSocket
from ..transport.wire import WireStream
from .upstream import UpstreamError, connect_upstream, ping_upstream_within

if TYPE_CHECKING:
    from ..config.loader import WebSocketConfig
    from ..observability.metrics import Metrics
    from ..session.connection import Session

log = logging.getLogger("broker.proxy")

_TEMPLATE = re.compile(r"\{(env|file):([^}]+)\}")
_HEADER_TOKEN = re.compile(r"[\x21-\x7e]+")
_UNSENDABLE = {1005: CloseCode.NORMAL, 1006: CloseCode.GOING_AWAY, 1015: CloseCode.GOING_AWAY}


def resolve_headers(route: ProxyRoute, environ: dict[str, str] | None = None) -> list[tuple[bytes, bytes]]:
    """The route's headers with ``{env:NAME}`` and ``{file:/path}`` filled in. A missing
    variable or file is a ConfigError naming the route (never an empty credential)."""
    environ = dict(os.environ) if environ is None else environ
    return [
        (name.encode("latin-1"), _TEMPLATE.sub(partial(_fill, route, name, environ=environ), template).encode("latin-1"))
        for name, template in route.headers.items()
    ]


def _fill(route: ProxyRoute, header: str, match: re.Match[str], environ: dict[str, str]) -> str:
    kind, ref = match.group(1), match.group(2).strip()
    if kind == "env":
        if not environ.get(ref):
            raise ConfigError(f"[[proxy]] {route.path}: header {header}: environment variable {ref} is not set")
        return environ[ref]
    try:
        return Path(ref).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"[[proxy]] {route.path}: header {header}: cannot read {ref}: {exc.strerror}") from None


class ProxyRoutes:
    """The configured routes, their resolved credentials, their metrics, and what
    every relay uses: the upstream leg's heartbeat and write bound, the close timeout."""

    def __init__(self, routes: Sequence[ProxyRoute], metrics: Metrics, websocket: WebSocketConfig,
                 close_timeout: float) -> None:
        self.routes = {route.path: route for route in routes}
        self.headers = {route.path: resolve_headers(route) for route in routes}
        self.ssl_contexts: dict[str, ssl.SSLContext | None] = {}
        for route in routes:
            context = None
            if route.upstream_ca_file:
                context = ssl.create_default_context(cafile=route.upstream_ca_file)
            self.ssl_contexts[route.path] = context
        self.active: Counter[tuple[str, LoginKey]] = Counter()  # (route, login) -> open sessions
        self.metrics = metrics
        self.websocket = websocket
        self.close_timeout = close_timeout

    def __contains__(self, path: str) -> bool:
        return path in self.routes

    def upstream_request(self, route: ProxyRoute, target: str) -> tuple[str, list[tuple[bytes, bytes]]]:
        """The upstream URL (with only the allowed query parameters) and headers."""
        query = parse_qsl(urlsplit(target).query, keep_blank_values=True)
        forwarded = [(k, v) for k, v in query if k in route.forward_query]
        url = route.upstream
        if forwarded:
            url += ("&" if "?" in url else "?") + urlencode(forwarded)
        headers = list(self.headers[route.path])
        client_key = client_api_key(route, target)
        if client_key is not None:
            headers = [(k, v) for k, v in headers if k.lower() != b"authorization"]
            headers.append((b"Authorization", f"Bearer {client_key}".encode("latin-1")))
        return url, headers


def client_api_key(route: ProxyRoute, target: str) -> str | None:
    """The ``apiKey`` query parameter a route with ``allow_client_api_key`` passes on
    as the upstream's bearer, or None. Raises ValueError (the reply to a bad request,
    without the key) unless it is printable ASCII: a header value cannot carry the rest."""
    if not route.allow_client_api_key:
        return None
    key = next((v for k, v in parse_qsl(urlsplit(target).query, keep_blank_values=True) if k == "apiKey" and v), None)
    if key is not None and not _HEADER_TOKEN.fullmatch(key):
        raise ValueError("apiKey: must be printable ASCII without spaces or control characters")
    return key


def _sendable(code: int | None, fallback: int) -> int:
    if code is None:
        return fallback
    if code in _UNSENDABLE:
        return fallback if code == 1006 else _UNSENDABLE[code]
    return code if 1000 <= code <= 4999 and code not in (1004, 1005, 1006, 1015) else fallback


class ProxyRelay:
    """The handler of one client on a proxy route (:class:`~broker.session.connection.ConnectionHandler`):
    relays it to the route's upstream, through the connection's public methods."""

    __slots__ = ("route", "upstream", "upstream_close", "_routes", "_upstream_wire", "_counted", "_frames_up",
                 "_frames_down", "_bytes_up", "_bytes_down")

    def __init__(self, routes: ProxyRoutes, route: ProxyRoute) -> None:
        self.route = route
        self.upstream: trio_websocket.WebSocketConnection | None = None
        self.upstream_close: tuple[int, str] | None = None  # the code and reason to close the upstream with
        self._routes = routes
        self._upstream_wire: WireStream | None = None
        self._counted: tuple[str, LoginKey] | None = None
        labels = {"route": route.path}
        metrics = routes.metrics
        self._frames_up = metrics.proxy_frames.labels(direction="upstream", **labels)
        self._frames_down = metrics.proxy_frames.labels(direction="client", **labels)
        self._bytes_up = metrics.proxy_bytes.labels(direction="upstream", **labels)
        self._bytes_down = metrics.proxy_bytes.labels(direction="client", **labels)

    async def serve(self, connection: Session, upgrade: UpgradeRequest, target: str, tasks: trio.Nursery) -> None:
        """Authenticate, open the upstream leg (its tasks in ``tasks``), relay until
        either side closes; the upstream is then closed (bounded) whatever ended the
        relay: an error, a close, or eviction cancelling this."""
        route = self.route
        offered = [p for p in upgrade.subprotocols if p in route.forward_subprotocols]
        failure: UpstreamError | None = None
        try:
            # With the token in the request, the upstream is opened before the client is
            # accepted, so the client gets the subprotocol the upstream chose.
            preauth = connection.preauthenticated
            if preauth is not None and self._admit_user(preauth.login_key):
                failure = await self._open_upstream(tasks, target, offered)
            connection.accept(upgrade, self.upstream.subprotocol if self.upstream else None,
                              route.max_message_bytes, route.buffer_messages)
            if not await connection.authenticate() or not connection.admit_relay():
                return
            principal = connection.principal
            assert principal is not None
            if self._counted is None and not self._admit_user(principal.login_key):
                connection.refuse(ErrorCode.RATE_LIMITED, "too many sessions on this route for this user",
                                  CloseCode.POLICY, "too many proxy sessions")
                return
            if self.upstream is None and failure is None:
                failure = await self._open_upstream(tasks, target, ())
            if failure is not None:
                log.info("%s %s: %s", connection.id, route.path, failure.reason)
                extra = {"status": failure.status} if failure.status is not None else {}
                connection.refuse(ErrorCode.UPSTREAM_UNAVAILABLE, failure.reason, CloseCode.UPSTREAM_UNAVAILABLE,
                                  "upstream unavailable", **extra)
                self._count_close("client", CloseCode.UPSTREAM_UNAVAILABLE)
                return
            connection.user_id = principal.user_id
            log.info("%s %s relaying for %s", connection.id, route.path, connection.user_id)
            connection.start_timers()  # heartbeat and idle on the client leg, run by its reader
            await self._relay(connection)
        finally:
            await self._close_upstream(connection.close_reason)
            if self._counted is not None:
                self._routes.active[self._counted] -= 1
                self._routes.metrics.proxy_open.labels(route.path).dec()

    def _admit_user(self, login: LoginKey) -> bool:
        key = (self.route.path, login)
        if self._routes.active[key] >= self.route.max_sessions_per_user:
            return False
        self._routes.active[key] += 1
        self._counted = key
        metrics = self._routes.metrics
        metrics.proxy_sessions.labels(self.route.path).inc()
        metrics.proxy_open.labels(self.route.path).inc()
        return True

    async def _open_upstream(self, nursery: trio.Nursery, target: str, subprotocols: Sequence[str]) -> UpstreamError | None:
        routes = self._routes
        try:
            url, headers = routes.upstream_request(self.route, target)
        except ValueError as exc:  # the front end refuses these with 400 first; never a silent drop
            return UpstreamError(str(exc))
        try:
            self.upstream, self._upstream_wire = await connect_upstream(
                nursery, url, headers=headers, subprotocols=subprotocols,
                ssl_context=routes.ssl_contexts[self.route.path], timeout=self.route.connect_timeout,
                max_message_size=self.route.max_message_bytes, message_queue_size=self.route.buffer_messages,
                max_backlog=routes.websocket.outbox_max_bytes,
            )
        except UpstreamError as exc:
            return exc
        return None

    async def _relay(self, connection: Session) -> None:
        assert self.upstream is not None
        with trio.move_on_after(self.route.max_session_seconds) as session_limit:
            async with trio.open_nursery() as relay:
                relay.start_soon(self._upstream_keepalive, connection)
                relay.start_soon(self._client_to_upstream, connection, relay.cancel_scope)
                relay.start_soon(self._upstream_to_client, connection, relay.cancel_scope)
        if session_limit.cancelled_caught:
            connection.evict(CloseCode.NORMAL, "maximum session length reached", "proxy_session_limit")

    async def _client_to_upstream(self, connection: Session, relay: trio.CancelScope) -> None:
        upstream = self.upstream
        assert upstream is not None
        while True:
            try:
                message = await connection.receive_message()  # runs the client leg's timers
            except ConnectionClosed as exc:
                self._count_close("client", exc.code)
                self.upstream_close = (_sendable(exc.code, CloseCode.GOING_AWAY), "client closed")
                relay.cancel()
                return
            if message is None:
                return  # a timer evicted the connection: its scope ends the relay
            try:
                await upstream.send_message(message)
            except trio_websocket.ConnectionClosed:
                return  # the other direction sees the upstream close
            self._frames_up.inc()
            self._bytes_up.inc(len(message))

    async def _upstream_to_client(self, connection: Session, relay: trio.CancelScope) -> None:
        upstream, ws = self.upstream, connection.ws
        assert upstream is not None and isinstance(ws, ServerWebSocket)  # proxy routes are WebSocket only
        while True:
            try:
                message = await upstream.get_message()
            except trio_websocket.ConnectionClosed as exc:
                code = exc.reason.code if exc.reason else None
                self._count_close("upstream", code)
                if connection.close_code is None:
                    connection.close_code = _sendable(code, CloseCode.UPSTREAM_UNAVAILABLE)
                    connection.close_reason = (exc.reason.reason if exc.reason and code != 1006 else None) or (
                        "upstream connection lost" if code == 1006 else "upstream closed")
                relay.cancel()
                return
            now = connection.last_activity = trio.current_time()
            if connection.past_expiry(now):
                return  # nothing reaches a client whose token expired: TOKEN_EXPIRED, 4005
            try:
                await ws.send_message(message)  # waits while the client is slow: backpressure upstream
            except ConnectionClosed:
                return  # the other direction sees the client close
            self._frames_down.inc()
            self._bytes_down.inc(len(message))

    async def _upstream_keepalive(self, connection: Session) -> None:
        upstream = self.upstream
        assert upstream is not None
        config = self._routes.websocket
        while True:
            await trio.sleep(config.heartbeat_interval)
            answered = await ping_upstream_within(upstream, config.heartbeat_timeout)
            if answered is None:
                return
            if not answered:
                self.upstream_close = (CloseCode.GOING_AWAY, "heartbeat timeout")
                connection.evict(CloseCode.UPSTREAM_UNAVAILABLE, "upstream heartbeat timeout",
                                 "upstream_heartbeat_timeout")
                return

    async def _close_upstream(self, client_close_reason: str) -> None:
        upstream, wire = self.upstream, self._upstream_wire
        if upstream is None or wire is None:  # both are set together
            return
        if upstream.closed is None:
            code, reason = self.upstream_close or (CloseCode.GOING_AWAY, client_close_reason or "client session ended")
            with trio.move_on_after(self._routes.close_timeout, shield=True):
                await upstream.aclose(code, reason)
        with trio.CancelScope(shield=True):
            await wire.aclose()  # drop the socket now, whatever the upstream did

    def _count_close(self, side: str, code: int | None) -> None:
        self._routes.metrics.proxy_closes.labels(self.route.path, side, str(code)).inc()
