"""One client's HTTP/1.1 connection, server side: bounded request heads in, responses
out, keep-alive, and what an upgrade leaves behind. The common keep-alive request and
the plain WebSocket upgrade are read by a strict parser of its own
(:mod:`broker.protocols.http_head`), anything else by h11.

The rules it enforces, so routes never see them:

* a request head must arrive within its timeout (408, or a silent close if nothing
  came at all) and fit ``max_head_bytes`` however it arrives: in pieces (h11's bound)
  or in one read (checked here), else 431;
* a request with both Content-Length and Transfer-Encoding is refused with 400 and the
  connection closed (RFC 9112 section 6.3: a smuggling attempt);
* ``Expect: 100-continue`` is answered with ``100 Continue`` when, and only when, a
  route reads the body; a declared length over ``max_body_bytes`` is refused (413)
  without reading the body (so, with Expect, before the client sends it);
* a response to HEAD carries the headers of the GET response and no body;
* a response whose request body was not read, or sent while ``closing``, says
  ``Connection: close``; keep-alive has no request cap (so no request is ever lost to
  an unannounced close), only the idle ``keepalive_timeout``.

Errors: :class:`HttpError` carries the status and one line of text to answer with;
``refuse`` sends such an answer outside any state machine and the caller closes.
Transport errors (``BrokenResourceError`` ...) propagate.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus

import h11
import trio

from ..observability.redact import redact
from ..protocols.http_head import BODILESS_STATUSES, RequestHead, parse_common_head, response_head


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class HttpError(Exception):
    """Answer with ``status``; ``body`` is one line of text (or JSON for the API)."""

    def __init__(self, status: int, body: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(body)
        self.status = status
        self.body = body
        self.headers = headers or []


def header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


class Http1Connection:
    """One connection's requests, read by limits. Not shared between tasks: one task
    reads a request, routes it and responds, then the next.

    Two ways to read a request. The fast path (keep-alive or a plain WebSocket upgrade,
    the common head that :func:`~broker.protocols.http_head.parse_common_head` accepts,
    a Content-Length body) parses and answers without h11. Anything else (an unusual
    head, HTTP/1.0, ``Expect``, chunked bodies, ``Connection: close``, an unusual
    upgrade, a head too large or cut short) goes to a fresh h11 connection with the bytes read so far, which serves
    that one request; once both sides are done, the bytes it read past the request come
    back to the fast path. So every error status and edge case is h11's, as before."""

    __slots__ = ("stream", "_h11", "_buffer", "max_head_bytes", "max_body_bytes", "head_timeout",
                 "keepalive_timeout", "requests", "request", "head_only", "_unread_body", "_closing")

    def __init__(self, stream: trio.abc.Stream, *, max_head_bytes: int, max_body_bytes: int,
                 head_timeout: float, keepalive_timeout: float) -> None:
        self.stream = stream
        self._h11: h11.Connection | None = None  # serving the current request, if the fast path did not
        self._buffer = b""  # received, not yet parsed (fast path only)
        self.max_head_bytes = max_head_bytes
        self.max_body_bytes = max_body_bytes
        self.head_timeout = head_timeout
        self.keepalive_timeout = keepalive_timeout
        self.requests = 0  # request heads read so far
        self.request: RequestHead | None = None  # the current one
        self.head_only = False  # the current request is HEAD: responses carry no body
        self._unread_body = 0  # fast path: body bytes of the current request not read
        self._closing = False  # fast path: the last response said Connection: close

    async def next_request(self) -> RequestHead | None:
        """The next request head (header names in lower case), or None when the client
        closed or went idle: within ``head_timeout`` for the first request, within
        ``keepalive_timeout`` between requests. Raises HttpError (400, 408, 431, 501)
        for a head that cannot be served; the caller refuses it and closes."""
        if self._h11 is not None:  # the last request was h11's
            conn = self._h11
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return None  # closing: the client asked to, a body was left unread, or we did
            self._buffer = conn.trailing_data[0]
            self._h11 = None
        elif self._closing or self._unread_body:
            return None
        self.request = None
        self.head_only = False
        limit = self.max_head_bytes
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0 and _head_may_follow(buffer, limit):
            timeout = self.head_timeout if self.requests == 0 else self.keepalive_timeout
            eof = False
            with trio.move_on_after(timeout):
                while True:
                    data = await self.stream.receive_some(65536)
                    if not data:
                        eof = True
                        break
                    buffer += data
                    end = buffer.find(b"\r\n\r\n")
                    if end >= 0 or not _head_may_follow(buffer, limit):
                        break
            self._buffer = buffer
            if eof:
                if not buffer:
                    return None
                return await self._next_request_h11(eof=True)
            if end < 0 and _head_may_follow(buffer, limit):
                if buffer:  # part of a head came, not all of it
                    raise HttpError(408, "request head not received in time")
                return None
        head = parse_common_head(buffer[:end + 4]) if 0 <= end <= limit - 4 else None
        if head is None:
            return await self._next_request_h11(eof=False)
        self._buffer = buffer[end + 4:]
        self._unread_body = head.content_length or 0
        self.requests += 1
        self.request = head
        self.head_only = head.method == b"HEAD"
        return head

    async def _next_request_h11(self, *, eof: bool) -> RequestHead | None:
        """Read the next request with h11, from the bytes received so far (and, if its
        head is not complete in them, from the stream)."""
        conn = self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head_bytes)
        conn.receive_data(self._buffer)
        self._buffer = b""
        if eof:
            conn.receive_data(b"")
        timeout = self.head_timeout if self.requests == 0 else self.keepalive_timeout
        with trio.move_on_after(timeout):
            while True:
                buffered = len(conn.trailing_data[0])
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    status = exc.error_status_hint if exc.error_status_hint >= 400 else 400
                    raise HttpError(status, f"bad request: {exc}") from None
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await self.stream.receive_some(65536)))  # bytes(bytes) is no copy
                    continue
                if not isinstance(event, h11.Request):
                    return None  # ConnectionClosed
                # h11 bounds a head that arrives in pieces; this, one that came in one read
                if buffered - len(conn.trailing_data[0]) > self.max_head_bytes:
                    raise HttpError(431, f"request head larger than {self.max_head_bytes} bytes")
                if header(event.headers, b"transfer-encoding") is not None and \
                        header(event.headers, b"content-length") is not None:
                    raise HttpError(400, "both Content-Length and Transfer-Encoding: send one of them")
                self.requests += 1
                length = header(event.headers, b"content-length")
                self.request = RequestHead(event.method, event.target, event.http_version, list(event.headers),
                                           list(event.headers.raw_items()),
                                           int(length) if length is not None and length.isdigit() else None)
                self.head_only = event.method == b"HEAD"
                return self.request
        if conn.trailing_data[0]:  # part of a head came, not all of it
            raise HttpError(408, "request head not received in time")
        return None

    async def read_body(self) -> bytes:
        """The current request's body, at most ``max_body_bytes`` (413 beyond), within
        ``head_timeout`` (408). Sends ``100 Continue`` first if the client waits for it."""
        if self._h11 is not None:
            return await self._read_body_h11()
        length = self._unread_body
        if length > self.max_body_bytes:
            raise HttpError(413, f"body larger than {self.max_body_bytes} bytes")
        buffer = self._buffer
        if len(buffer) < length:
            received = bytearray(buffer)
            with trio.move_on_after(self.head_timeout):
                while len(received) < length:
                    data = await self.stream.receive_some(65536)
                    if not data:
                        raise HttpError(400, "bad request body: peer closed connection without sending "
                                             "complete message body")
                    received += data
            buffer = bytes(received)
            if len(buffer) < length:
                self._buffer = buffer
                raise HttpError(408, "request body not received in time")
        self._buffer = buffer[length:]
        self._unread_body = 0
        return buffer[:length]

    async def _read_body_h11(self) -> bytes:
        conn = self._h11
        assert conn is not None
        limit = self.max_body_bytes
        length = self.request.content_length if self.request is not None else None
        if length is not None and length > limit:
            raise HttpError(413, f"body larger than {limit} bytes")
        if conn.they_are_waiting_for_100_continue:
            go_on = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            await self.stream.send_all(conn.send(go_on))
        body = bytearray()
        with trio.move_on_after(self.head_timeout):
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    raise HttpError(400, f"bad request body: {exc}") from None
                if len(body) + _chunk_left(conn) > limit:  # a chunk announced larger than the bound: now
                    raise HttpError(413, f"body larger than {limit} bytes")
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await self.stream.receive_some(65536)))  # bytes(bytes) is no copy
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > limit:
                        raise HttpError(413, f"body larger than {limit} bytes")
                elif isinstance(event, h11.EndOfMessage):
                    return bytes(body)
                else:
                    raise HttpError(400, "incomplete request body")
        raise HttpError(408, "request body not received in time")

    async def respond(self, status: int, body: bytes, content_type: str,
                      headers: Sequence[tuple[str, str]] = (), *, closing: bool = False) -> None:
        """Send a whole response (no body for HEAD) in one write. ``Connection: close``
        is added when ``closing`` or when the request body was not read (the connection
        ends then)."""
        if self._h11 is None:
            close = closing or self._unread_body > 0
            self._closing = close
            head = response_head(status, content_type, len(body), headers, close=close)
            await self.stream.send_all(head if self.head_only or not body else head + body)
            return
        all_headers = [*([] if status in BODILESS_STATUSES else
                         [("Content-Type", content_type), ("Content-Length", str(len(body)))]), *headers]
        if closing or not self._request_finished():
            all_headers.append(("Connection", "close"))
        conn = self._h11
        response = h11.Response(status_code=status, headers=all_headers, reason=reason_phrase(status).encode())
        data = conn.send(response)
        if body and not self.head_only:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)

    @property
    def pipelinable(self) -> bool:
        """The current request came by the fast path and its body is read: its answer
        may be sent later, after the next requests are read (:meth:`send_pipelined`)."""
        return self._h11 is None and not self._unread_body and not self._closing and not self.head_only

    @property
    def more_received(self) -> bool:
        """Bytes of a next request are already received (the client pipelines)."""
        return bool(self._buffer)

    async def send_pipelined(self, responses: Sequence[tuple[int, bytes, str, Sequence[tuple[str, str]]]]) -> None:
        """Send the answers (status, body, content type, headers) to earlier,
        ``pipelinable`` requests (keep-alive), in one write, from the one task that
        writes such answers while another reads the next requests."""
        await self.stream.send_all(b"".join(
            response_head(status, content_type, len(body), headers) + body
            for status, body, content_type, headers in responses
        ))

    def _request_finished(self) -> bool:
        """Consume the end of a request whose body we did not read; False if body bytes
        are still unread (the connection cannot be reused then)."""
        conn = self._h11
        assert conn is not None
        while conn.their_state is h11.SEND_BODY:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return False
            if event is h11.NEED_DATA or isinstance(event, h11.Data):
                return False
        return conn.their_state is h11.DONE

    def upgrade_leftover(self) -> bytes:
        """After an upgrade request's head: the bytes the client sent after it (its first
        WebSocket frames, if it did not wait for the 101)."""
        return self._h11.trailing_data[0] if self._h11 is not None else self._buffer

    async def refuse(self, status: int, text: str, headers: Sequence[tuple[str, str]] = (),
                     timeout: float = 5.0) -> None:
        """Answer ``status`` with one line of text and ``Connection: close``, outside h11's
        state machine (the request was unusable, or is not HTTP's any more). Bounded by
        ``timeout``; the caller closes the stream."""
        await send_refusal(self.stream, status, text, headers, timeout, body=not self.head_only)


def _chunk_left(conn: h11.Connection) -> int:
    """Bytes of the current chunk of a chunked body not received yet, as its size line
    announced (0 when not known). h11 keeps it in its reader and does not publish it;
    should that change, the body is still bounded as it arrives, only not at once."""
    left = getattr(getattr(conn, "_reader", None), "_bytes_in_chunk", 0)
    return left if isinstance(left, int) else 0


def _head_may_follow(buffer: bytes, limit: int) -> bool:
    """True if ``buffer`` (no CRLF CRLF in it) may still become a common head: worth
    reading more for the fast path. False when h11 has something to say now: a head
    ended by bare LFs, more than ``limit`` bytes, or a first byte no request starts with
    (h11 refuses those at once, a TLS hello for one)."""
    return (len(buffer) <= limit and b"\n\n" not in buffer and b"\n\r\n" not in buffer
            and (not buffer or buffer[0] >= 0x21))


async def send_refusal(stream: trio.abc.Stream, status: int, text: str, headers: Sequence[tuple[str, str]] = (),
                       timeout: float = 5.0, *, body: bool = True) -> None:
    """A complete ``Connection: close`` response with a one-line text body, sent within
    ``timeout`` (nothing is sent after it: the caller closes the stream anyway)."""
    payload = (redact(text) + "\n").encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    head = (f"HTTP/1.1 {status} {reason_phrase(status)}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(payload)}\r\n{extra}"
            "Connection: close\r\n\r\n").encode()
    with trio.move_on_after(timeout):
        await stream.send_all(head + payload if body else head)


SEND_CHUNK = 16384  # a write with a progress timeout is sent in pieces of this size


class SendTimeoutStream(trio.abc.Stream):
    """``stream`` whose ``send_all`` must make progress: each :data:`SEND_CHUNK` bytes
    must be taken by the transport within ``timeout``, else BrokenResourceError (the
    caller closes the connection: a client that never reads cannot hold it, nor the
    slot it takes). What was sent of a timed-out write is undefined. Reads, closing:
    the wrapped stream's own."""

    __slots__ = ("stream", "timeout")

    def __init__(self, stream: trio.abc.Stream, timeout: float) -> None:
        self.stream = stream
        self.timeout = timeout

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        start = 0
        while True:
            with trio.move_on_after(self.timeout):
                await self.stream.send_all(view[start:start + SEND_CHUNK])
                start += SEND_CHUNK
                if start >= len(view):
                    return
                continue
            raise trio.BrokenResourceError(f"no progress sending for {self.timeout:g}s: the peer does not read")

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()
