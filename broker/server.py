"""One port for HTTP and WebSocket.

Each TCP connection's request head is read with h11 (bounded in time and size).
Plain routes (health, metrics, the API) are answered here, with keep-alive. An
upgrade on a WebSocket path is admitted (origin allow-list, connection limits: a
clear HTTP status when refused), then the stream and the bytes already read go to a
:class:`~broker.connection.Session`. A plain GET on a WebSocket path gets 426, an
unknown path 404, both with a one-line text body.

``handle_tcp`` never raises: one connection's failure is logged once and never
reaches ``serve_listeners`` (an escaping exception would kill the whole server).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import h11
import trio

from .api import Api, HttpError, require_method
from .auth import AuthError, Principal, token_from_request
from .connection import Session
from .limits import origin_allowed
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .proxy import ProxySession
from .redact import redact

if TYPE_CHECKING:
    from .app import Broker

log = logging.getLogger("broker.server")

MAX_KEEPALIVE_REQUESTS = 1000
_PHRASES = {400: "Bad Request", 403: "Forbidden", 408: "Request Timeout", 413: "Content Too Large",
            429: "Too Many Requests", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def _peer(stream: trio.abc.Stream) -> tuple[str, str]:
    """("host:port", "host") of the peer, for logs and per-address limits."""
    try:
        socket = stream.socket if isinstance(stream, trio.SocketStream) else stream.transport_stream.socket  # type: ignore[attr-defined]
        host, port, *_ = socket.getpeername()
        return f"{host}:{port}", str(host)
    except Exception:
        return "?", "?"


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _is_upgrade(headers: list[tuple[bytes, bytes]]) -> bool:
    upgrade = (_header(headers, b"upgrade") or b"").lower()
    connection = (_header(headers, b"connection") or b"").lower()
    return b"websocket" in upgrade and b"upgrade" in connection


class HttpFront:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.config = broker.config.server
        self.api = Api(broker)
        self.ws_paths = {self.config.ws_path, *broker.proxy_routes.routes}

    async def handle_tcp(self, stream: trio.abc.Stream) -> None:
        """The ``serve_listeners`` handler: contains every failure of this connection."""
        remote, host = _peer(stream)
        try:
            upgrade = await self._serve(stream, remote, host)
            if upgrade is not None:  # the HTTP state is gone: the session holds only what it needs
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

    async def _serve(self, stream: trio.abc.Stream, remote: str,
                     host: str) -> tuple[bytes, str, list[tuple[bytes, bytes]], str, str] | None:
        """Answer plain requests (keep-alive); return what a WebSocket upgrade needs."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.config.max_request_head_bytes)
        received = bytearray()
        for served in range(MAX_KEEPALIVE_REQUESTS):
            timeout = self.config.request_head_timeout if served == 0 else self.config.keepalive_timeout
            try:
                request = await self._read_head(stream, conn, received, timeout)
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint if exc.error_status_hint >= 400 else 400
                await self._send_raw(stream, status, f"bad request: {exc}")
                return None
            except HttpError as exc:
                await self._send_raw(stream, exc.status, exc.body)
                return None
            if request is None:
                return None
            target = request.target.decode("latin-1")
            path = urlsplit(target).path
            headers = [(k.lower(), v) for k, v in request.headers]
            if path in self.ws_paths and _is_upgrade(headers):
                client = self._client_address(host, headers)
                return bytes(received), target, headers, remote if client == host else client, client
            await self._route(stream, conn, request, path, headers)
            received.clear()
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return None  # closing (draining, an unread body, or the client asked to)
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return None
        return None

    async def _websocket(self, stream: trio.abc.Stream, preread: bytes, target: str,
                         headers: list[tuple[bytes, bytes]], remote: str, host: str) -> None:
        try:
            preauth = self._admit(target, headers, host)
        except HttpError as exc:
            log.info("upgrade from %s refused: %d %s", remote, exc.status, exc.body)
            self.broker.metrics.http_requests.labels("websocket", str(exc.status)).inc()
            await self._send_raw(stream, exc.status, exc.body)
            return
        route = self.broker.proxy_routes.routes.get(urlsplit(target).path)
        if route is not None:
            session: Session = ProxySession(self.broker, route, remote, host, preauth)
        else:
            session = Session(self.broker, remote, host, preauth)
        # The session keeps the request only until it has authenticated: drop ours.
        run = session.run(stream, preread, target, headers)
        del preread, target, headers
        # Shielded: the broker ends sessions by evicting them (close 1001 on shutdown).
        with trio.CancelScope(shield=True):
            await run

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

    def _admit(self, target: str, headers: list[tuple[bytes, bytes]], host: str) -> Principal | AuthError | None:
        """Checks made before the upgrade, each refused with a clear HTTP status. A token
        in the request is verified here (once); a bad one is still reported the
        protocol's way (UNAUTHORIZED, then 1008) after the upgrade."""
        broker = self.broker
        limits = broker.config.limits
        if broker.draining:
            raise HttpError(503, "server is draining: reconnect shortly")
        origin = _header(headers, b"origin")
        request_host = _header(headers, b"host")
        if not origin_allowed(origin.decode("latin-1") if origin is not None else None,
                              request_host.decode("latin-1") if request_host is not None else None,
                              limits.allowed_origins):
            raise HttpError(403, "origin not allowed: add it to [limits] allowed_origins")
        if len(broker.hub) >= limits.max_connections:
            raise HttpError(503, "server at its connection limit: retry later")
        if broker.hub.connections_from(host) >= limits.max_connections_per_ip:
            raise HttpError(429, "too many connections from this address")
        token = token_from_request(headers, target)
        if token is None:
            return None
        try:
            principal = broker.authenticator.authenticate(token)
        except AuthError as exc:
            return exc
        replaces = broker.config.chat.single_login and principal.kind == "jwt"
        if not replaces and broker.hub.user_connections(principal.user_id) >= limits.max_connections_per_user:
            raise HttpError(429, "too many connections for this user")
        return principal

    @staticmethod
    def _request_finished(conn: h11.Connection) -> bool:
        """Consume the end of a request whose body we did not read; False if body bytes
        are still unread (the connection cannot be reused then)."""
        while conn.their_state is h11.SEND_BODY:
            event = conn.next_event()
            if event is h11.NEED_DATA or isinstance(event, h11.Data):
                return False
        return conn.their_state is h11.DONE

    async def _read_head(self, stream: trio.abc.Stream, conn: h11.Connection, received: bytearray,
                         timeout: float) -> h11.Request | None:
        with trio.move_on_after(timeout) as waiting:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    received += data
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    return event
                return None  # ConnectionClosed or PAUSED
        if waiting.cancelled_caught and received:
            raise HttpError(408, "request head not received in time")
        return None

    async def _read_body(self, stream: trio.abc.Stream, conn: h11.Connection, headers: list[tuple[bytes, bytes]]) -> bytes:
        limit = self.config.max_body_bytes
        length = _header(headers, b"content-length")
        if length is not None and int(length) > limit:
            raise HttpError(413, f"body larger than {limit} bytes")
        body = bytearray()
        with trio.move_on_after(self.config.request_head_timeout):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > limit:
                        raise HttpError(413, f"body larger than {limit} bytes")
                elif isinstance(event, h11.EndOfMessage):
                    return bytes(body)
                else:
                    raise HttpError(400, "incomplete request body")
        raise HttpError(408, "request body not received in time")

    async def _route(self, stream: trio.abc.Stream, conn: h11.Connection, request: h11.Request,
                     path: str, headers: list[tuple[bytes, bytes]]) -> None:
        """Answer one plain HTTP request."""
        config = self.config
        method = request.method.decode("ascii", "replace")
        metrics = self.broker.metrics
        if self.api.owns(path):
            route = "publish" if path == self.api.publish_path else "api"
            response = await self.api.handle(method, path, headers, lambda: self._read_body(stream, conn, headers))
            metrics.http_requests.labels(route, str(response.status)).inc()
            await self._respond(stream, conn, response.status, response.body, response.content_type, response.headers)
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
                status, body = (503, {"status": "draining"}) if self.broker.draining else (200, {"status": "ok"})
                await self._respond(stream, conn, status, json.dumps(body).encode(), "application/json")
            elif path == config.metrics_path:
                route = "metrics"
                require_method(method, "GET")
                await self._respond(stream, conn, 200, self.broker.metrics.render(), METRICS_CONTENT_TYPE)
            else:
                raise HttpError(404, f"no route for {path}")
        except HttpError as exc:
            status = exc.status
            await self._respond(stream, conn, exc.status, (exc.body + "\n").encode(), "text/plain; charset=utf-8",
                                exc.headers)
        metrics.http_requests.labels(route, str(status)).inc()

    async def _respond(self, stream: trio.abc.Stream, conn: h11.Connection, status: int, body: bytes,
                       content_type: str, extra: list[tuple[str, str]] | None = None) -> None:
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        headers += extra or []
        if self.broker.draining or not self._request_finished(conn):
            headers.append(("Connection", "close"))  # draining, or a body we did not read
        data = conn.send(h11.Response(status_code=status, headers=headers))
        data += conn.send(h11.Data(data=body)) if body else b""
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)

    async def _send_raw(self, stream: trio.abc.Stream, status: int, text: str) -> None:
        """A response outside h11's state machine (the request itself was unusable)."""
        body = (redact(text) + "\n").encode()
        head = (
            f"HTTP/1.1 {status} {_PHRASES.get(status, 'Error')}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with trio.move_on_after(self.config.close_timeout):
            await stream.send_all(head + body)

