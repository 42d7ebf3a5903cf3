"""Connecting to an upstream WebSocket server, for proxy routes.

The upstream leg runs over a :class:`~broker.transport.wire.WireStream`, so a send cancelled
during teardown never leaves half a frame on the upstream socket either.

trio-websocket reports a refused handshake (``ConnectionRejected``) by raising it in
the connection's reader task, which lives in the nursery given to
``wrap_client_stream``. :class:`_GuardedNursery` is the one place that relies on
this: it catches handshake errors in that task and turns them into an
:class:`UpstreamError` for the caller, instead of letting them tear down the
session's nursery. ``test_upstream_refusing_gives_4004_with_its_status`` in
``tests/test_proxy.py`` fails if a trio-websocket upgrade changes the behaviour.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import trio
import trio_websocket

from ..transport import trio_websocket_patch  # noqa: F401  (answers pings only while open: trio-websocket #184)
from ..transport.wire import WireStream


class UpstreamError(Exception):
    """The upstream could not be reached or refused the WebSocket handshake."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class _GuardedNursery:
    """Looks like a nursery to ``wrap_client_stream``; contains handshake failures."""

    def __init__(self, nursery: trio.Nursery, handshake: trio.CancelScope) -> None:
        self._nursery = nursery
        self._handshake = handshake
        self.error: BaseException | None = None

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: object = None) -> None:
        async def guarded() -> None:
            try:
                await fn(*args)
            except (trio_websocket.HandshakeError, trio.BrokenResourceError, OSError) as exc:
                self.error = exc
            # A reader that ends before the handshake completes means it failed; after
            # success the scope has been left and cancelling it does nothing.
            self._handshake.cancel()

        self._nursery.start_soon(guarded, name=name)


async def ping_upstream_within(ws: trio_websocket.WebSocketConnection, seconds: float) -> bool | None:
    """Ping the upstream: True if the pong came within ``seconds``, False if not, None
    if the connection closed. Safe to cancel over a WireStream (no half frame is left)."""
    with trio.move_on_after(seconds):
        try:
            await ws.ping()
        except trio_websocket.ConnectionClosed:
            return None
        return True
    return False


async def connect_upstream(
    nursery: trio.Nursery,
    url: str,
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
    subprotocols: Sequence[str] = (),
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
    max_message_size: int = 1 << 20,
    message_queue_size: int = 16,
    max_backlog: int = 1 << 20,
) -> tuple[trio_websocket.WebSocketConnection, WireStream]:
    """An open WebSocket to ``url`` whose tasks run in ``nursery``, and the stream
    under it (close that to drop the socket at once). Raises UpstreamError (with the
    HTTP status when the upstream answered one)."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    with trio.move_on_after(timeout) as waiting:
        try:
            if secure:
                stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(
                    host, port, ssl_context=ssl_context or ssl.create_default_context()
                )
            else:
                stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise UpstreamError(f"upstream unreachable: {exc.strerror or exc}") from None
        wire = WireStream(stream, max_backlog=max_backlog, spawn=nursery.start_soon)
        with trio.CancelScope() as handshake:
            guard = _GuardedNursery(nursery, handshake)
            try:
                # trio-websocket annotates a trio.Nursery and a SocketStream | SSLStream, but
                # uses only start_soon and the Stream interface, which these provide
                connection = await trio_websocket.wrap_client_stream(
                    guard,  # type: ignore[arg-type]
                    wire,  # type: ignore[arg-type]
                    host_header,
                    resource,
                    subprotocols=list(subprotocols),
                    extra_headers=list(headers),
                    message_queue_size=message_queue_size,
                    max_message_size=max_message_size,
                    receive_buffer_size=65536,
                )
                return connection, wire
            except (trio.BrokenResourceError, trio_websocket.ConnectionClosed) as exc:
                guard.error = guard.error or exc
        await wire.aclose()
        error = guard.error or wire.failure
        if isinstance(error, trio_websocket.ConnectionRejected):
            raise UpstreamError(f"upstream refused the connection: HTTP {error.status_code}", error.status_code)
        if isinstance(error, ssl.SSLError) or isinstance(getattr(error, "__cause__", None), ssl.SSLError):
            raise UpstreamError(f"upstream TLS failed: {error}")
        raise UpstreamError(f"upstream closed during the handshake: {error or 'no answer'}")
    assert waiting.cancelled_caught
    raise UpstreamError(f"upstream did not answer within {timeout:g}s")
