"""One port for HTTP and WebSocket.

Each TCP connection's request head is read with h11 (bounded in time and size).
Plain routes (health, metrics, publish) are answered here, with keep-alive; an
upgrade on a WebSocket path hands the stream, plus the bytes already read, to a
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

from .connection import Session
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .protocols import ErrorCode, ProtocolError, decode_publish, error_message
from .redact import redact
from .rooms import RoomUnavailable
from .store import StoreError

if TYPE_CHECKING:
    from .app import Broker

log = logging.getLogger("broker.server")

MAX_KEEPALIVE_REQUESTS = 1000


class HttpError(Exception):
    def __init__(self, status: int, body: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(body)
        self.status = status
        self.body = body
        self.headers = headers or []


def _remote(stream: trio.abc.Stream) -> str:
    try:
        host, port, *_ = stream.socket.getpeername()  # type: ignore[attr-defined]
        return f"{host}:{port}"
    except Exception:
        return "?"


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
        self.ws_paths = {self.config.ws_path}

    async def handle_tcp(self, stream: trio.abc.Stream) -> None:
        """The ``serve_listeners`` handler: contains every failure of this connection."""
        remote = _remote(stream)
        try:
            await self._serve(stream, remote)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("connection from %s failed", remote)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.abc.Stream, remote: str) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.config.max_request_head_bytes)
        received = bytearray()
        for served in range(MAX_KEEPALIVE_REQUESTS):
            timeout = self.config.request_head_timeout if served == 0 else self.config.keepalive_timeout
            try:
                request = await self._read_head(stream, conn, received, timeout)
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint if exc.error_status_hint >= 400 else 400
                await self._send_raw(stream, status, f"bad request: {exc}")
                return
            except HttpError as exc:
                await self._send_raw(stream, exc.status, exc.body)
                return
            if request is None:
                return
            target = request.target.decode("latin-1")
            path = urlsplit(target).path
            headers = [(k.lower(), v) for k, v in request.headers]
            if path in self.ws_paths and _is_upgrade(headers):
                if self.broker.draining:
                    await self._send_raw(stream, 503, "server is draining: reconnect shortly")
                    return
                session = Session(self.broker, remote)
                # Shielded: the broker ends sessions by evicting them (close 1001 on shutdown).
                with trio.CancelScope(shield=True):
                    await session.run(stream, bytes(received), target, headers)
                return
            keep_alive = await self._route(stream, conn, request, path, headers)
            received.clear()
            if not keep_alive or not self._request_finished(conn) or conn.our_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

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

    async def _read_body(self, stream: trio.abc.Stream, conn: h11.Connection, request: h11.Request) -> bytes:
        limit = self.config.max_body_bytes
        length = _header([(k.lower(), v) for k, v in request.headers], b"content-length")
        if length is not None and int(length) > limit:
            raise HttpError(413, f"body larger than {limit} bytes")
        body = bytearray()
        with trio.move_on_after(self.config.request_head_timeout) as waiting:
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
        assert waiting.cancelled_caught
        raise HttpError(408, "request body not received in time")

    async def _route(self, stream: trio.abc.Stream, conn: h11.Connection, request: h11.Request,
                     path: str, headers: list[tuple[bytes, bytes]]) -> bool:
        """Answer one plain HTTP request; True to keep the connection open."""
        config = self.config
        method = request.method.decode("ascii", "replace")
        route = "other"
        try:
            if path in self.ws_paths:
                route = "websocket"
                raise HttpError(
                    426,
                    f"{path} is a WebSocket endpoint: connect with a WebSocket client (Upgrade: websocket)",
                    [("Upgrade", "websocket")],
                )
            if path == config.health_path:
                route = "health"
                self._require_method(method, ("GET", "HEAD"))
                status, body = (503, {"status": "draining"}) if self.broker.draining else (200, {"status": "ok"})
                await self._respond(stream, conn, status, json.dumps(body).encode(), "application/json")
            elif path == config.metrics_path:
                route = "metrics"
                self._require_method(method, ("GET",))
                await self._respond(stream, conn, 200, self.broker.metrics.render(), METRICS_CONTENT_TYPE)
                status = 200
            elif path == config.publish_path:
                route = "publish"
                self._require_method(method, ("POST",))
                status = await self._publish(stream, conn, request, headers)
            else:
                raise HttpError(404, f"no route for {path}")
        except HttpError as exc:
            status = exc.status
            self.broker.metrics.http_requests.labels(route, str(status)).inc()
            if conn.their_state is h11.SEND_BODY:
                # the body was not read: don't try to parse the next request from it
                await self._respond(stream, conn, exc.status, (exc.body + "\n").encode(), "text/plain; charset=utf-8",
                                    exc.headers, close=True)
                return False
            await self._respond(stream, conn, exc.status, (exc.body + "\n").encode(), "text/plain; charset=utf-8", exc.headers)
            return True
        self.broker.metrics.http_requests.labels(route, str(status)).inc()
        return True

    @staticmethod
    def _require_method(method: str, allowed: tuple[str, ...]) -> None:
        if method not in allowed:
            raise HttpError(405, f"method {method} not allowed here (use {' or '.join(allowed)})",
                            [("Allow", ", ".join(allowed))])

    async def _publish(self, stream: trio.abc.Stream, conn: h11.Connection, request: h11.Request,
                       headers: list[tuple[bytes, bytes]]) -> int:
        broker = self.broker
        if not broker.api_keys.configured:
            raise HttpError(403, "publishing is disabled: configure [api] keys or BROKER_API_KEY")
        if not broker.api_keys.check(headers):
            raise HttpError(401, "missing or wrong API key (Authorization: Bearer <key> or X-API-Key)",
                            [("WWW-Authenticate", 'Bearer realm="broker"')])
        if broker.draining:
            raise HttpError(503, "server is draining")
        body = await self._read_body(stream, conn, request)
        try:
            events = decode_publish(body, broker.config.jobs.extra_event_types)
        except ProtocolError as exc:
            await self._respond(stream, conn, 400, error_message(exc.code, exc.message), "application/json")
            return 400
        try:
            seqs = await broker.job_rooms.publish_many(events)
        except (StoreError, RoomUnavailable) as exc:
            log.error("publish failed: %s", exc)
            await self._respond(stream, conn, 503, error_message(ErrorCode.UNAVAILABLE, "not stored, retry"),
                                "application/json")
            return 503
        results = [{"jobId": e.job_id, "type": e.type, "seq": s} for e, s in zip(events, seqs, strict=False)]
        body_out = {"status": "ok", **results[0]} if len(results) == 1 else {"status": "ok", "events": results}
        await self._respond(stream, conn, 200, json.dumps(body_out).encode(), "application/json")
        return 200

    async def _respond(self, stream: trio.abc.Stream, conn: h11.Connection, status: int, body: bytes,
                       content_type: str, extra: list[tuple[str, str]] | None = None, close: bool = False) -> None:
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        headers += extra or []
        if close or self.broker.draining:
            headers.append(("Connection", "close"))
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


_PHRASES = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}
