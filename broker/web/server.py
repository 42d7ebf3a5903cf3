"""One port for HTTP and WebSocket: the routes and the way to a WebSocket session.

Every accepted connection first takes a slot (``[limits] max_http_connections``, in
total and per address) before anything is read; when the bounds are reached it gets
503 or 429 (over TLS: nothing) and is closed at once. Its requests are then read by
:class:`~broker.transport.http1.Http1Connection` (bounded in time and size) and answered here:
health, metrics, the API, with keep-alive. A plain GET on a WebSocket path gets 426,
an unknown path 404, both with a one-line text body. An upgrade on a WebSocket path
is checked (RFC 6455, :func:`~broker.protocols.handshake.validate_upgrade`) and
admitted (origin allow-list, connection limits), each refusal a clear HTTP status
with a one-line reason; then the connection gives its slot back and the stream goes
to a :class:`~broker.session.connection.Session`, counted by the hub from then on.

``handle_tcp`` never raises: one connection's failure is logged once and never
reaches the accept loop (an escaping exception would kill the whole server).

A little over 400 lines on purpose: it is the request's one decision point (plain route,
SSE, upgrade with its admission checks); the pipelining and reading parts already live in
:mod:`.pipeline`, and what is left shares the request's state.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs
import trio

from ..auth.tokens import AuthError, AuthUnavailable, Principal, token_from_request
from ..hub.connections import login_refusal
from ..observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..protocols.handshake import HandshakeError, UpgradeRequest, validate_upgrade, wants_websocket
from ..protocols.http_head import RequestHead
from ..proxy.route import ProxyRelay, client_api_key
from ..session.connection import Session, SessionDeps
from ..session.login import BanList
from ..transport.accept import Episode, discard_unread, peer_address
from ..transport.http1 import Http1Connection, HttpError, SendTimeoutStream, send_refusal
from ..transport.http1 import header as _header
from ..transport.limits import ConnectionSlots, origin_allowed
from .api import Api, PublishAnswer, failure_response, require_method
from .endpoints import bearer_matches, endpoint_index
from .pipeline import PIPELINE_DEPTH, Pipelined, PublishPipeline, drained
from .sse import SseEndpoint, SseOpen
from .static import StaticFiles

if TYPE_CHECKING:
    from ..auth.hook import AuthHook
    from ..auth.tokens import Authenticator
    from ..config.loader import BrowserConfig, LimitsConfig, ServerConfig
    from ..hub.connections import Hub
    from ..observability.metrics import Metrics
    from ..proxy.route import ProxyRoutes

log = logging.getLogger("broker.server")

REFUSAL_TIMEOUT = 1.0  # writing a short answer to a fresh socket: its send buffer is empty

# bytes past the request head, target, headers, the checked upgrade, remote, client
Upgrade = tuple[bytes, str, list[tuple[bytes, bytes]], UpgradeRequest, str, str]


def _path(target: str) -> str:
    """The path of a request target: the target itself in the common case (origin form,
    no query), else what urlsplit finds."""
    if target[:1] == "/" and target[1:2] != "/" and "?" not in target and "#" not in target:
        return target
    return urlsplit(target).path


@attrs.frozen
class FrontDeps:
    """What the HTTP front uses, built once by the broker (broker/app.py)."""

    server: ServerConfig
    limits: LimitsConfig
    browser: BrowserConfig
    single_login: bool  # [chat] single_login, for the per-user limit checked before an upgrade
    hub: Hub
    authenticator: Authenticator
    metrics: Metrics
    proxy_routes: ProxyRoutes
    api: Api
    sessions: SessionDeps  # what the sessions it starts use
    draining: Callable[[], bool]  # True once shutdown began: upgrades refused, keep-alive ended
    health: Callable[[], tuple[int, dict[str, Any]]]  # the /health status and body
    bans: BanList | None = None  # users banned through the server API: their upgrades get 403
    hook: AuthHook | None = None  # [auth] hook_url: who a connection without a token is


class HttpFront:
    def __init__(self, deps: FrontDeps) -> None:
        self.deps = deps
        self.config = deps.server
        self.api = deps.api
        self.ws_paths = {self.config.ws_path, *deps.proxy_routes.routes}
        limits = deps.limits
        self.slots = ConnectionSlots(limits.max_http_connections, limits.max_http_connections_per_ip,
                                     self.config.trusted_proxies)
        self._refusals = Episode(log, "HTTP connection refused")
        self.static = StaticFiles(deps.browser, self.config.ws_path, api_prefix=self.config.api_prefix,
                                  publish_path=self.config.publish_path)
        self._index = endpoint_index(self.config, deps.browser, sorted(deps.proxy_routes.routes))
        self.sse = SseEndpoint(deps.browser.sse_path, deps.sessions, deps.authenticator, limits.allowed_origins,
                               self.config.close_timeout, self._admit)
        # (route, status) -> its counter: a few routes times the statuses this module answers
        self._request_counters: dict[tuple[str, int], Any] = {}

    def _count(self, route: str, status: int) -> None:
        """Count one answered request (the labelled child is looked up once per pair)."""
        counter = self._request_counters.get((route, status))
        if counter is None:
            counter = self._request_counters[route, status] = \
                self.deps.metrics.http_requests.labels(route, str(status))
        counter.inc()

    async def handle_tcp(self, stream: trio.abc.Stream) -> None:
        """The accept loop's handler: contains every failure of this connection."""
        remote, host = peer_address(stream)
        try:
            bound = self.slots.take(host)
            if bound is not None:
                await self._refuse_connection(stream, bound)
                return
            try:
                upgrade = await self._serve(stream, remote, host)
            finally:
                self.slots.give_back(host)  # a WebSocket is counted by the hub from here on
            if isinstance(upgrade, SseOpen):  # the connection is a stream now, served by a session
                await self.sse.serve_stream(stream, upgrade)
            elif upgrade is not None:  # the HTTP state is gone: the session holds only what it needs
                websocket = self._websocket(stream, *upgrade)
                del upgrade
                await websocket
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("connection from %s failed", remote)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _refuse_connection(self, stream: trio.abc.Stream, bound: str) -> None:
        """A connection over a bound: a short answer without reading anything, and close."""
        self.deps.metrics.connections_refused.labels(f"http_{bound}").inc()
        self._refusals.occurred(f"the {bound} bound is reached", trio.current_time())
        if not isinstance(stream, trio.SocketStream):
            return  # TLS: an answer would need a handshake first; just close
        if bound == "total":
            await send_refusal(stream, 503, "server busy: too many open HTTP connections, retry later",
                               timeout=REFUSAL_TIMEOUT)
        else:
            await send_refusal(stream, 429, "too many connections from this address", timeout=REFUSAL_TIMEOUT)
        discard_unread(stream)

    async def _serve(self, stream: trio.abc.Stream, remote: str, host: str) -> Upgrade | SseOpen | None:
        """Answer plain requests (keep-alive); return what a WebSocket upgrade needs.

        Publishes a client pipelines (sends before the answer to the one before) are
        read and queued in their rooms one after another, their answers written in
        request order by a second task as their commits come back (at most
        PIPELINE_DEPTH waiting; then the next request is not read until one is
        answered). A publish with nothing received behind it and no answer pending (a
        client that waits for each answer) is answered here, without the task hop. Any
        other request waits until every answer before it is written."""
        config = self.config
        # answers must make progress (send_timeout): a client that never reads is closed, not held
        http = Http1Connection(SendTimeoutStream(stream, config.send_timeout),
                               max_head_bytes=config.max_request_head_bytes, max_body_bytes=config.max_body_bytes,
                               head_timeout=config.request_head_timeout, keepalive_timeout=config.keepalive_timeout)
        first = await self._read_requests(http, None, remote, host)
        if not isinstance(first, Pipelined):
            return first
        # The client pipelines publishes: from here on a second task writes the answers.
        # Made only now, so a connection that never pipelines (every WebSocket upgrade,
        # most API clients) costs no task, nursery or channel.
        pipeline = PublishPipeline()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_answers, http, pipeline, nursery.cancel_scope)
            try:
                await pipeline.add(first.answer)
                result = await self._read_requests(http, pipeline, remote, host)
                assert not isinstance(result, Pipelined)
                return result
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None  # the client went away (outside the nursery these would come in a group)
            finally:
                pipeline.close()  # the writer ends once every answer queued is written
        return None  # the writer failed (the client went away): nothing more to answer

    async def _read_requests(self, http: Http1Connection, pipeline: PublishPipeline | None, remote: str,
                             host: str) -> Upgrade | SseOpen | Pipelined | None:
        """The request loop. Without a ``pipeline`` it returns :class:`Pipelined` at the
        first publish the client pipelines, for the caller to start the answer writer."""
        config = self.config
        while True:
            try:
                request = await http.next_request()
            except HttpError as exc:
                await drained(pipeline)
                self._count("other", exc.status)
                await http.refuse(exc.status, exc.body, exc.headers, config.close_timeout)
                return None
            if request is None:
                await drained(pipeline)
                return None
            target = request.target.decode("latin-1")
            path = _path(target)
            headers = request.headers  # names in lower case
            if (path == self.api.publish_path and request.method == b"POST" and not self.deps.draining()
                    and self.api.authorized(headers)):
                try:
                    body = await http.read_body()
                except HttpError as exc:
                    await drained(pipeline)
                    response = failure_response("POST", path, exc)
                    self._count("publish", response.status)
                    await self._respond(http, response.status, response.body, response.content_type, response.headers)
                    continue
                answer = await self.api.start_publish(body)
                if http.pipelinable and (http.more_received or pipeline is not None and pipeline.busy):
                    if pipeline is None:
                        return Pipelined(answer)
                    await pipeline.add(answer)  # the client pipelines: read on while this commits
                    continue
                await drained(pipeline)
                response = await answer()
                self._count("publish", response.status)
                await self._respond(http, response.status, response.body, response.content_type, response.headers)
                continue
            await drained(pipeline)
            if path in self.ws_paths and wants_websocket(headers):
                try:
                    upgrade = validate_upgrade(request.method, request.http_version, headers)
                except HandshakeError as exc:
                    log.info("upgrade from %s refused: %d %s", remote, exc.status, exc.message)
                    self._count("websocket", exc.status)
                    await http.refuse(exc.status, exc.message, exc.headers, config.close_timeout)
                    return None
                client = self._client_address(host, headers)
                return (http.upgrade_leftover(), target, headers, upgrade,
                        remote if client == host else client, client)
            if path == self.sse.path and path and request.method == b"GET":
                return SseOpen(target, headers, request.http_version == b"1.1", remote,
                               self._client_address(host, headers))
            await self._route(http, request, path, headers)

    async def _write_answers(self, http: Http1Connection, pipeline: PublishPipeline, reader: trio.CancelScope) -> None:
        """Write the pipelined publishes' answers in request order: each answer with
        those behind it that are already there, in one write (a batch of commits
        answers many at once). If the client has gone, the connection ends (the reader
        is cancelled)."""
        held: PublishAnswer | None = None  # taken from the queue, not answered yet
        try:
            while True:
                try:
                    answer = held if held is not None else await pipeline.next()
                except trio.EndOfChannel:
                    return
                held = None
                responses = [await answer()]
                while len(responses) < PIPELINE_DEPTH and (following := pipeline.next_nowait()) is not None:
                    if not following.ready:
                        held = following
                        break
                    responses.append(await following())
                for response in responses:
                    self._count("publish", response.status)
                await http.send_pipelined([(r.status, r.body, r.content_type, r.headers) for r in responses])
                pipeline.written(len(responses))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            reader.cancel()

    async def _websocket(self, stream: trio.abc.Stream, preread: bytes, target: str,
                         headers: list[tuple[bytes, bytes]], upgrade: UpgradeRequest, remote: str, host: str) -> None:
        try:
            preauth = await self._admit(target, headers, host)
        except HttpError as exc:
            log.info("upgrade from %s refused: %d %s", remote, exc.status, exc.body)
            self._count("websocket", exc.status)
            await send_refusal(stream, exc.status, exc.body, exc.headers, self.config.close_timeout)
            return
        route = self.deps.proxy_routes.routes.get(urlsplit(target).path)
        handler = ProxyRelay(self.deps.proxy_routes, route) if route is not None else None
        session = Session(self.deps.sessions, remote, host, preauth, handler)
        # The session keeps the request only until it has authenticated: drop ours.
        run = session.run(stream, upgrade, target, headers, preread)
        del preread, target, headers, upgrade
        await run  # shielded inside: the broker ends sessions by evicting them (1001 on shutdown)

    def _client_address(self, peer: str, headers: list[tuple[bytes, bytes]]) -> str:
        """The client's address: the peer's, or behind a trusted proxy, the nearest
        untrusted address in X-Forwarded-For (so per-address limits mean clients)."""
        trusted = self.config.trusted_proxies
        if peer not in trusted:
            return peer
        forwarded = _header(headers, b"x-forwarded-for")
        if not forwarded:
            return peer
        hops = [hop.strip() for hop in forwarded.decode("latin-1").split(",") if hop.strip()]
        for hop in reversed(hops):
            if hop not in trusted:
                return hop
        return hops[0] if hops else peer

    async def _admit(self, target: str, headers: list[tuple[bytes, bytes]], host: str) -> Principal | AuthError | None:
        """Checks made before the upgrade, each refused with a clear HTTP status. A token
        in the request is verified here (once); a bad one is still reported the
        protocol's way (UNAUTHORIZED, then 1008) after the upgrade. Without a token, the
        auth hook (if configured) is asked, likewise. A token or cookie that cannot be
        checked now (no JWKS keys, the hook unreachable) is refused with 503."""
        deps = self.deps
        limits = deps.limits
        if deps.draining():
            raise HttpError(503, "server is draining: reconnect shortly")
        origin = _header(headers, b"origin")
        request_host = _header(headers, b"host")
        if not origin_allowed(origin.decode("latin-1") if origin is not None else None,
                              request_host.decode("latin-1") if request_host is not None else None,
                              limits.allowed_origins):
            raise HttpError(403, "origin not allowed: add it to [limits] allowed_origins")
        if len(deps.hub) >= limits.max_connections:
            raise HttpError(503, "server at its connection limit: retry later")
        if deps.hub.connections_from(host) >= limits.max_connections_per_ip:
            raise HttpError(429, "too many connections from this address")
        route = deps.proxy_routes.routes.get(urlsplit(target).path)
        if route is not None:
            try:
                client_api_key(route, target)
            except ValueError as exc:
                raise HttpError(400, str(exc)) from None
        token = token_from_request(headers, target)
        try:
            if token is not None:
                principal = await deps.authenticator.authenticate_fresh(token)
            else:
                request = deps.hook.request_from(headers, target, host) if deps.hook is not None else None
                if request is None or deps.hook is None:
                    return None  # it may still send an auth frame
                principal = await deps.hook.identify(request)
        except AuthUnavailable as exc:
            raise HttpError(503, "authentication unavailable: try again shortly") from exc
        except AuthError as exc:
            return exc
        if principal.is_user and deps.bans is not None and deps.bans.banned(principal.user_id):
            raise HttpError(403, "this user is banned for now")
        if route is None:  # a proxy route has its own per-user limit (max_sessions_per_user)
            refusal = login_refusal(deps.hub, principal, limits.max_connections_per_user, deps.single_login)
            if refusal is not None:
                raise HttpError(429, refusal)
        return principal

    async def _route(self, http: Http1Connection, request: RequestHead, path: str,
                     headers: list[tuple[bytes, bytes]]) -> None:
        """Answer one plain HTTP request."""
        config = self.config
        method = request.method.decode("ascii", "replace")
        if path == self.sse.path and path:
            response = await self.sse.handle(method, headers, http.read_body)
            self._count("sse", response.status)
            await self._respond(http, response.status, response.body, response.content_type, response.headers)
            return
        if self.api.owns(path):
            route = "publish" if path == self.api.publish_path else "api"
            query = request.target.decode("latin-1").partition("?")[2].partition("#")[0]
            response = await self.api.handle(method, path, headers, http.read_body, query)
            self._count(route, response.status)
            await self._respond(http, response.status, response.body, response.content_type, response.headers)
            return
        route, status = "other", 200
        try:
            if path in self.ws_paths:
                route = "websocket"
                raise HttpError(426, f"{path} is a WebSocket endpoint: connect with a WebSocket client "
                                     "(Upgrade: websocket)", [("Upgrade", "websocket")])
            if path == config.health_path:
                route = "health"
                require_method(method, "GET", "HEAD")
                status, body = self.deps.health()
                await self._respond(http, status, json.dumps(body).encode(), "application/json")
            elif path == config.metrics_path:
                route = "metrics"
                require_method(method, "GET", "HEAD")
                if config.metrics_token and not bearer_matches(headers, config.metrics_token):
                    raise HttpError(401, "metrics need Authorization: Bearer <[server] metrics_token>",
                                    [("WWW-Authenticate", "Bearer")])
                await self._respond(http, 200, self.deps.metrics.render(), METRICS_CONTENT_TYPE)
            elif self.static.owns(path):
                route = "static"
                response = self.static.respond(method, path, headers)
                status = response.status
                await self._respond(http, status, response.body, response.content_type, response.headers)
            elif path == "/":
                route = "index"
                require_method(method, "GET", "HEAD")
                await self._respond(http, 200, self._index, "application/json")
            else:
                raise HttpError(404, f"no route for {path} (GET / lists the endpoints)")
        except HttpError as exc:
            status = exc.status
            await self._respond(http, exc.status, (exc.body + "\n").encode(), "text/plain; charset=utf-8",
                                exc.headers)
        self._count(route, status)

    async def _respond(self, http: Http1Connection, status: int, body: bytes, content_type: str,
                       extra: list[tuple[str, str]] | None = None) -> None:
        """Send a response; while draining it closes the connection (``Connection: close``)."""
        await http.respond(status, body, content_type, extra or [], closing=self.deps.draining())
