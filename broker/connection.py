"""The per-connection actor for ``/ws``: handshake, authentication, then a nursery of
reader | heartbeat | idle watch, and a bounded close.

Evicting a connection (newer login, missed heartbeat, slow consumer, shutdown) is one
sync call, :meth:`Session.evict`: it records the close code and cancels the session's
scope; everything inside stops with it. The close that follows is bounded by
``close_timeout`` and then the socket is dropped, whatever the peer does.

The caller runs :meth:`Session.run` shielded from outside cancellation: the broker
stops sessions by evicting them (1001 on shutdown), so every client gets a close
frame rather than a reset.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio
import trio_websocket

from .auth import AuthError, Principal, token_from_request
from .protocols import (
    Auth,
    ClientCommand,
    CloseCode,
    ErrorCode,
    JoinJob,
    LeaveJob,
    Ping,
    ProtocolError,
    connection_established,
    decode_client_message,
    error_message,
    left_message,
    pong_message,
    text_frame,
)
from .rooms import RoomUnavailable
from .wire import OutboxFull, WireStream

if TYPE_CHECKING:
    from .app import Broker

log = logging.getLogger("broker.connection")

MESSAGE_QUEUE_SIZE = 4  # trio-websocket's inbound queue; our reader drains it promptly


class Session:
    """One client WebSocket on the broker endpoint."""

    def __init__(self, broker: Broker, remote: str) -> None:
        self.id = f"client-{secrets.token_hex(6)}"
        self.broker = broker
        self.remote = remote
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.principal: Principal | None = None
        self.jobs: set[str] = set()
        self.ws: trio_websocket.WebSocketConnection | None = None
        self.wire: WireStream | None = None
        self.last_activity = trio.current_time()
        self._scope = trio.CancelScope()

    # -- what rooms and the hub call (sync, never blocks) -----------------

    def evict(self, code: int, reason: str, metric: str) -> None:
        """Close this connection with ``code``: the first reason recorded wins."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self.broker.metrics.evictions.labels(metric).inc()
            log.info("%s evicted (%d %s)", self.id, code, reason)
        self.closed = True
        self._scope.cancel()

    def send_frame_nowait(self, frame: bytes) -> bool:
        """Queue an encoded frame. False if the connection is closing; a full outbox
        evicts it as a slow consumer (4003)."""
        if self.closed or self.wire is None:
            return False
        try:
            self.wire.write_nowait(frame)
        except OutboxFull:
            self.evict(CloseCode.SLOW_CONSUMER, "slow consumer: outbound queue overflowed", "slow_consumer")
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True  # the peer is gone; the reader sees it too
            self._scope.cancel()
            return False
        self.last_activity = trio.current_time()
        return True

    def send_message_nowait(self, payload: bytes) -> bool:
        return self.send_frame_nowait(text_frame(payload))

    # -- life cycle ---------------------------------------------------------

    async def run(self, stream: trio.abc.Stream, preread: bytes, target: str,
                  headers: Sequence[tuple[bytes, bytes]]) -> None:
        """Serve the connection until it ends or is evicted, then close it (bounded)."""
        config = self.broker.config
        wire = self.wire = WireStream(stream, preread, max_backlog=config.websocket.outbox_max_bytes)
        hub = self.broker.hub
        hub.register(self)
        try:
            async with trio.open_nursery() as transport_tasks:
                transport_tasks.start_soon(wire.flush_forever)
                with self._scope:
                    try:
                        await self._handshake_and_serve(transport_tasks, target, headers)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self.closed = True  # the peer vanished mid-handshake
                    except Exception:
                        # one connection's bug is this connection's 1011, never the server's
                        log.exception("%s failed", self.id)
                        if self.close_code is None:
                            self.close_code, self.close_reason = CloseCode.INTERNAL, "internal error"
                self.closed = True
                await self._close()
                transport_tasks.cancel_scope.cancel()
        finally:
            self.closed = True
            for job_id in self.jobs:
                self.broker.job_rooms.leave_nowait(job_id, self)
            with trio.CancelScope(shield=True):
                await wire.aclose()
            hub.unregister(self)

    async def _handshake_and_serve(self, transport_tasks: trio.Nursery, target: str,
                                   headers: Sequence[tuple[bytes, bytes]]) -> None:
        config = self.broker.config
        with trio.move_on_after(config.server.request_head_timeout):
            request = await trio_websocket.wrap_server_stream(
                transport_tasks,
                self.wire,
                message_queue_size=MESSAGE_QUEUE_SIZE,
                max_message_size=config.websocket.max_frame_bytes,
                receive_buffer_size=config.websocket.receive_buffer_bytes,
            )
            self.ws = await request.accept()
        if self.ws is None:
            return
        self.broker.metrics.connections_total.inc()
        if await self._authenticate(target, headers):
            await self._serve()

    async def _close(self) -> None:
        ws = self.ws
        if ws is None or ws.closed is not None:
            return
        code = self.close_code if self.close_code is not None else CloseCode.NORMAL
        with trio.move_on_after(self.broker.config.server.close_timeout, shield=True):
            await ws.aclose(code, self.close_reason or None)

    async def _authenticate(self, target: str, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        """PROTOCOL.md section 2. On failure: UNAUTHORIZED, then close 1008."""
        assert self.ws is not None
        token = token_from_request(headers, target)
        reason = "no token"
        if token is None:
            reason = f"no auth frame within {self.broker.config.websocket.auth_timeout:g}s"
            with trio.move_on_after(self.broker.config.websocket.auth_timeout):
                try:
                    first = await self.ws.get_message()
                except trio_websocket.ConnectionClosed:
                    return False
                try:
                    command = decode_client_message(first)
                    token = command.token if isinstance(command, Auth) else None
                    reason = "first frame was not an auth frame"
                except ProtocolError:
                    reason = "first frame was not valid"
        if token is not None:
            try:
                self.principal = self.broker.authenticator.authenticate(token)
            except AuthError as exc:
                reason = exc.reason
        if self.principal is None:
            log.info("%s authentication refused from %s: %s", self.id, self.remote, reason)
            self.broker.metrics.auth_failures.inc()
            self.send_message_nowait(error_message(ErrorCode.UNAUTHORIZED, "Authentication failed"))
            self.close_code, self.close_reason = CloseCode.POLICY, "authentication failed"
            return False
        interval_ms = int(self.broker.config.websocket.heartbeat_interval * 1000)
        self.send_message_nowait(connection_established(self.id, self.principal.user_id, interval_ms))
        log.info("%s connected as %s (%s) from %s", self.id, self.principal.user_id, self.principal.kind, self.remote)
        return True

    async def _serve(self) -> None:
        async with trio.open_nursery() as tasks:
            tasks.start_soon(self._heartbeat)
            tasks.start_soon(self._idle_watch)
            await self._read_loop()
            tasks.cancel_scope.cancel()

    async def _read_loop(self) -> None:
        """Read and handle client messages until the peer closes. Keeps reading
        promptly: trio-websocket answers pings only while its queue has room."""
        assert self.ws is not None
        metrics = self.broker.metrics
        while True:
            try:
                message = await self.ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            self.last_activity = trio.current_time()
            metrics.messages_in.inc()
            try:
                await self._handle(decode_client_message(message))
            except ProtocolError as exc:
                metrics.bad_requests.labels(exc.code.value).inc()
                self.send_message_nowait(error_message(exc.code, exc.message))

    async def _handle(self, command: ClientCommand) -> None:
        assert self.principal is not None
        if isinstance(command, Ping):
            self.send_message_nowait(pong_message())
        elif isinstance(command, JoinJob):
            await self._join(command)
        elif isinstance(command, LeaveJob):
            if command.job_id in self.jobs:
                self.jobs.discard(command.job_id)
                self.broker.job_rooms.leave_nowait(command.job_id, self)
            self.send_message_nowait(left_message(command.job_id))
        elif isinstance(command, Auth):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "already authenticated")

    async def _join(self, command: JoinJob) -> None:
        assert self.principal is not None
        if not self.principal.may_join(command.job_id):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"not allowed to join job {command.job_id}")
        limit = self.broker.config.jobs.max_jobs_per_connection
        if command.job_id not in self.jobs and len(self.jobs) >= limit:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"at most {limit} jobs per connection")
        try:
            await self.broker.job_rooms.join(command.job_id, self, command.last_seq)
        except RoomUnavailable:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "job room unavailable, try again") from None
        self.jobs.add(command.job_id)

    async def _heartbeat(self) -> None:
        """A WebSocket ping every interval; no pong within the timeout closes with 4002.
        ``ws.ping`` is safe to cancel here: the WireStream never leaves half a frame."""
        assert self.ws is not None
        config = self.broker.config.websocket
        while True:
            await trio.sleep(config.heartbeat_interval)
            with trio.move_on_after(config.heartbeat_timeout) as waiting:
                try:
                    await self.ws.ping()
                except trio_websocket.ConnectionClosed:
                    return
            if waiting.cancelled_caught:
                self.evict(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout", "heartbeat_timeout")
                return

    async def _idle_watch(self) -> None:
        """Close (1000, "idle timeout") after ``idle_timeout`` with no application
        message in either direction. Exact: sleeps until the last activity's deadline."""
        idle_timeout = self.broker.config.websocket.idle_timeout
        while True:
            deadline = self.last_activity + idle_timeout
            await trio.sleep_until(deadline)
            if self.last_activity + idle_timeout <= trio.current_time():
                self.evict(CloseCode.NORMAL, "idle timeout", "idle_timeout")
                return
