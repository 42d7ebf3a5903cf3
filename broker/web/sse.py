"""The SSE fallback's HTTP side: ``GET /sse`` opens a stream, ``POST /sse`` sends on it.

A client that cannot get a WebSocket through (a proxy that drops ``Upgrade``) opens
``GET [browser] sse_path``: the same admission as an upgrade (draining, origin, the
connection limits, a token in the request checked once), then the connection becomes
a :class:`~broker.session.connection.Session` over a
:class:`~broker.transport.sse.SseChannel` whose first event names the stream with a
secret id (``secrets.token_urlsafe(32)``, never logged). The client's messages come
as ``POST`` requests on any connection, one message each, naming the stream in
``X-Broker-Stream``; they reach the session in the order they are accepted (a client
sends the next POST after the answer to the last).

POSTs carry the stream's auth: until the session has authenticated, the first POST's
``Authorization: Bearer`` token (or its body, an ``auth`` frame) authenticates it;
after that every POST must carry a token of the same principal (401 without one, 403
for another). Answers: 204 accepted; 400 empty or not UTF-8; 404 no such stream
(here: streams live on the node that opened them); 410 the stream is closing, the
message was not taken; 413 larger than ``max_frame_bytes`` (and the stream closes
1009, as a WebSocket would). A browser on another allowed origin gets CORS headers and
an answer to its preflight.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from ..auth.tokens import AuthError, Principal, token_from_request
from ..protocols import CloseCode
from ..protocols.sse import STREAM_HEADER
from ..session.connection import Session
from ..transport.http1 import HttpError, send_refusal
from ..transport.http1 import header as _header
from ..transport.limits import origin_allowed
from ..transport.sse import SseChannel
from .api import ApiResponse

if TYPE_CHECKING:
    from ..auth.tokens import Authenticator
    from ..session.connection import SessionDeps

_STREAM_HEADER = STREAM_HEADER.lower().encode()


@attrs.frozen
class SseOpen:
    """A GET on the stream path, taken out of the HTTP request loop (like an upgrade)."""

    target: str
    headers: list[tuple[bytes, bytes]]
    chunked: bool  # HTTP/1.1: a chunked body; HTTP/1.0 (nginx's default upstream): ended by close
    remote: str
    host: str  # the client's address (behind a trusted proxy: from X-Forwarded-For)


@attrs.define
class _Stream:
    session: Session
    channel: SseChannel
    token_digest: bytes | None = None  # the last token that proved this stream's principal
    auth_posted: bool = False  # a token went to the session (header or auth frame)


def _is_auth_frame(text: str) -> bool:
    """The body is a section 2 ``auth`` frame (read only before the stream authenticated)."""
    if '"auth"' not in text:
        return False
    try:
        message = json.loads(text)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("type") == "auth"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _text(status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> ApiResponse:
    return ApiResponse(status, (message + "\n").encode(), "text/plain; charset=utf-8", list(headers))


class SseEndpoint:
    """The open SSE streams of this node, by secret id, and their two routes."""

    def __init__(self, path: str, sessions: SessionDeps, authenticator: Authenticator,
                 allowed_origins: tuple[str, ...], close_timeout: float,
                 admit: Callable[[str, list[tuple[bytes, bytes]], str],
                                 Awaitable[Principal | AuthError | None]]) -> None:
        """``admit(target, headers, host)``: the front's checks before a session starts
        (raises HttpError to refuse; returns the verdict on a token in the request)."""
        self.path = path
        self.sessions = sessions
        self.authenticator = authenticator
        self.allowed_origins = allowed_origins
        self.close_timeout = close_timeout
        self.max_message_bytes = sessions.websocket.max_frame_bytes
        self._admit = admit
        self._streams: dict[str, _Stream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def cors_headers(self, headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
        """CORS for a request from an allowed origin (none without Origin, none for an
        origin not allowed: its page learns nothing, as with a refused upgrade)."""
        origin = _header(headers, b"origin")
        if origin is None or not self._origin_ok(headers):
            return []
        return [("Access-Control-Allow-Origin", origin.decode("latin-1")), ("Vary", "Origin")]

    def _origin_ok(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        origin, host = _header(headers, b"origin"), _header(headers, b"host")
        return origin_allowed(origin.decode("latin-1") if origin is not None else None,
                              host.decode("latin-1") if host is not None else None, self.allowed_origins)

    # -- GET: the stream ----------------------------------------------------------------

    async def serve_stream(self, stream: trio.abc.Stream, opened: SseOpen) -> None:
        """Admit the GET (or refuse it with a clear status) and serve its session until
        it ends. Shielded inside, like a WebSocket session: eviction ends it."""
        try:
            preauth = await self._admit(opened.target, opened.headers, opened.host)
        except HttpError as exc:
            await send_refusal(stream, exc.status, exc.body, exc.headers + self.cors_headers(opened.headers),
                               self.close_timeout)
            return
        stream_id = secrets.token_urlsafe(32)
        channel = SseChannel(stream_id)
        session = Session(self.sessions, opened.remote, opened.host, preauth)
        entry = _Stream(session, channel)
        if isinstance(preauth, Principal):
            token = token_from_request(opened.headers, opened.target)
            entry.token_digest = _digest(token) if token is not None else None
            entry.auth_posted = True
        self._streams[stream_id] = entry
        try:
            await session.run_sse(stream, channel, opened.chunked, self.cors_headers(opened.headers),
                                  opened.target, opened.headers)
        finally:
            del self._streams[stream_id]

    # -- POST: a message for a stream -------------------------------------------------

    async def handle(self, method: str, headers: list[tuple[bytes, bytes]],
                     read_body: Callable[[], Awaitable[bytes]]) -> ApiResponse:
        """Answer a plain request on the stream path: POST, the CORS preflight, or 405."""
        cors = self.cors_headers(headers)
        if not self._origin_ok(headers):
            return _text(403, "origin not allowed: add it to [limits] allowed_origins")
        if method == "OPTIONS":
            return ApiResponse(204, b"", "text/plain", cors + [
                ("Access-Control-Allow-Methods", "GET, POST"),
                ("Access-Control-Allow-Headers", f"Authorization, Content-Type, {STREAM_HEADER}"),
                ("Access-Control-Max-Age", "600"),
            ])
        if method != "POST":
            return _text(405, f"{self.path}: GET opens a stream, POST sends on it", [("Allow", "GET, POST")])
        response = await self._post(headers, read_body)
        response.headers.extend(cors)
        return response

    async def _post(self, headers: list[tuple[bytes, bytes]],
                    read_body: Callable[[], Awaitable[bytes]]) -> ApiResponse:
        stream_id = _header(headers, _STREAM_HEADER)
        entry = self._streams.get(stream_id.decode("latin-1")) if stream_id else None
        if entry is None:
            return _text(404, f"no such stream on this node: open one with GET {self.path}")
        session, channel = entry.session, entry.channel
        token = token_from_request(headers, "")  # headers only: never a secret in the URL
        inject = None
        if session.principal is None:
            if token is not None and not entry.auth_posted:
                inject, entry.auth_posted, entry.token_digest = token, True, _digest(token)
        elif token is None:
            return _text(401, "this stream's POSTs need its token: Authorization: Bearer <token>")
        elif not self._same_principal(entry, token):
            return _text(403, "this token is not the stream's principal")
        try:
            body = await read_body()
        except HttpError as exc:
            if exc.status == 413:
                return self._too_big(session)
            raise
        if len(body) > self.max_message_bytes:
            return self._too_big(session)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            session.evict(1007, "a message that is not UTF-8", "invalid_data")
            return _text(400, "the body is not UTF-8: the stream is closed (1007)")
        if not text and inject is None:
            return _text(400, "empty body: send one JSON message per POST")
        try:
            if session.principal is None and _is_auth_frame(text):
                entry.auth_posted = True  # the body authenticates: no token of the header's goes first
            elif inject is not None:
                await channel.post(json.dumps({"type": "auth", "token": inject}))
            if text:
                await channel.post(text)
        except trio.BrokenResourceError:
            return _text(410, "the stream is closing: the message was not taken")
        return ApiResponse(204, b"", "text/plain")

    def _too_big(self, session: Session) -> ApiResponse:
        session.evict(CloseCode.TOO_BIG, f"message larger than {self.max_message_bytes} bytes",
                      "message_too_big")
        return _text(413, f"message larger than {self.max_message_bytes} bytes: the stream is closed (1009)")

    def _same_principal(self, entry: _Stream, token: str) -> bool:
        """The token proves the stream's principal (the last token that did is
        remembered, so a client sending the same one costs no verification)."""
        digest = _digest(token)
        if entry.token_digest is not None and hmac.compare_digest(entry.token_digest, digest):
            return True
        try:
            principal = self.authenticator.authenticate(token)
        except AuthError:
            return False
        current = entry.session.principal
        if current is None or principal.login_key != current.login_key:
            return False
        entry.token_digest = digest
        return True
