"""The per-connection actor for ``/ws`` and ``/sse``: the wire and the timers of one client.

A :class:`Session` accepts the WebSocket, has the shared :class:`~broker.session.login.Login`
authenticate and log it in, then reads client messages until the connection ends,
running the timers (heartbeat, delivery confirmation, idle timeout) between reads
and the rate limit on every frame; then a bounded close. Its nursery holds a flush
task while there is a backlog and the offline chat replay while it runs
(broker/chat/replay.py). It is what rooms and the hub write to (all sync, none
blocks), and delegates the rest by composition: the commands to its
:class:`~broker.session.commands.Commands` (made on the first command), chat delivery
tracking to its :class:`~broker.chat.delivery.ChatDeliveries` (made at a user's
login or the first chat delivery, dropped when the replay ends with nothing to confirm).
A connection on a proxy route composes a :class:`ConnectionHandler` instead
(broker/proxy/route.py), which serves it through the public methods marked below.

The transport is a :class:`~broker.transport.channel.ClientChannel`: a WebSocket
(:meth:`Session.run`) or an SSE stream with POSTed input (:meth:`Session.run_sse`,
broker/transport/sse.py); the protocol, limits and timers are the same over both.

Evicting a connection (newer login, missed heartbeat, slow consumer, rate limit,
shutdown) is one sync call, :meth:`Session.evict`: it records the close code and
cancels the session's scope; everything inside stops with it. The close that follows
is bounded by ``close_timeout``; then the socket is dropped whatever the peer does.
:meth:`Session.run` shields itself from outside cancellation: the broker stops
sessions by evicting them (1001 on shutdown), so every client gets a close frame.

Over 400 lines on purpose: :class:`Session` is one object per connection, held by
the thousand, whose hot path (``send_frame_nowait``, the read loop, the timers)
shares its slots; its separable concerns already live apart (login, commands, chat
delivery tracking, the WebSocket, the wire), and splitting the rest would add an
indirection per frame.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Protocol

import attrs
import trio

from ..auth.tokens import AuthError, Principal, token_from_request
from ..chat.delivery import ChatDeliveries
from ..chat.replay import HeldMessage
from ..protocols import (
    Auth,
    ClientCommand,
    CloseCode,
    ErrorCode,
    Ping,
    ProtocolError,
    UpgradeRequest,
    decode_client_message,
    error_message,
    format_expiry,
    pong_message,
    text_frame,
    token_expiring_message,
    token_refreshed_message,
)
from ..protocols.deflate import negotiate
from ..transport.channel import ClientChannel
from ..transport.deflate import SharedDeflater
from ..transport.limits import Strikes, TokenBucket
from ..transport.sse import SseChannel
from ..transport.websocket import ConnectionClosed, ServerWebSocket, choose_subprotocol
from ..transport.wire import OutboxFull, WireStream
from .commands import CommandDeps, Commands, refused_request
from .credentials import refresh_by_hook, refresh_in_band

if TYPE_CHECKING:
    from ..chat.service import Chat
    from ..config.loader import ChatConfig, LimitsConfig, WebSocketConfig
    from ..hub.connections import Hub
    from ..observability.metrics import Metrics
    from ..protocols import Limits
    from .login import Login

log = logging.getLogger("broker.connection")

MAX_PENDING = 4  # client messages a ping waiter keeps while the session is busy; then it stops reading
_REPLACED = text_frame(error_message(ErrorCode.REPLACED, "replaced by a newer login of the same user"))
TOKEN_EXPIRED_REASON = "token expired: get a new token, then reconnect"


@attrs.frozen
class SessionDeps:
    """What every session of a broker uses, built once by the broker (broker/app.py)."""

    hub: Hub
    login: Login  # authentication and login
    commands: CommandDeps  # what each session's command handler uses
    chat: Chat  # the offline replay and delivery confirmations
    metrics: Metrics
    decode_limits: Limits
    websocket: WebSocketConfig
    limits: LimitsConfig
    chat_config: ChatConfig
    close_timeout: float
    deflater: SharedDeflater | None = None  # compresses each broadcast once for every member that negotiated it


class ConnectionHandler(Protocol):
    """Serves a connection in place of the broker protocol (a proxy route's relay):
    ``serve`` accepts the ``upgrade``, authenticates and serves until the connection
    ends, inside the connection's scope (eviction cancels it; an exception closes the
    connection with 1011, logged). ``tasks``: the connection's transport nursery."""

    async def serve(self, connection: Session, upgrade: UpgradeRequest, target: str, tasks: trio.Nursery) -> None: ...


class Session:
    """One client WebSocket on the broker endpoint. Lazy (what a connection may never
    use is made on first use), and its attributes are slots: an idle connection is
    what a broker holds by the thousand."""

    __slots__ = ("id", "deps", "remote", "remote_host", "_preauth", "closed", "close_code", "close_reason",
                 "principal", "user_id", "ws", "wire", "last_activity", "_scope", "_next_beat", "_ping", "_bucket",
                 "_strikes", "_upgrade", "_commands", "chat_deliveries", "_handler", "_tasks", "transport", "_warn_at",
                 "_expires")

    def __init__(self, deps: SessionDeps, remote: str, remote_host: str = "",
                 preauth: Principal | AuthError | None = None, handler: ConnectionHandler | None = None) -> None:
        self.id = f"client-{secrets.token_hex(6)}"
        self.deps = deps
        self.remote = remote
        self.remote_host = remote_host or remote
        self._preauth = preauth
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.principal: Principal | None = None
        self.user_id: str | None = None
        self.ws: ClientChannel | None = None
        self.transport = "websocket"  # or "sse": the label of its metrics
        self.wire: WireStream | None = None
        self.last_activity = trio.current_time()
        self._scope = trio.CancelScope()  # handshake, authentication, reading: what evict() cancels
        self._next_beat = math.inf  # the next heartbeat ping, once reading starts
        self._ping: tuple[int, float, int] | None = None  # the ping awaiting its pong: (seq, deadline, wire offset)
        self._bucket = TokenBucket(deps.limits.message_rate, deps.limits.message_burst, self.last_activity)
        self._strikes: Strikes | None = None  # made on the first rate-limit strike
        self._upgrade: tuple[str, Sequence[tuple[bytes, bytes]]] | None = None
        self._commands: Commands | None = None  # made on the first command
        self._tasks: trio.Nursery | None = None  # the connection's transport nursery, while it runs
        self.chat_deliveries: ChatDeliveries | None = None  # made at a user's login or the first chat delivery
        self._handler = handler  # None: the broker protocol
        self._warn_at = math.inf  # token_expiring (or asking the auth hook again) from then on
        self._expires = math.inf  # the credentials' exp + leeway: nothing reaches the client from then on

    # -- what rooms, chat and the hub call (sync, never blocks) -------------

    def evict(self, code: int, reason: str, metric: str) -> None:
        """Close this connection with ``code``: the first reason recorded wins."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self.deps.metrics.evictions.labels(metric).inc()
            log.info("%s evicted (%d %s)", self.id, code, reason)
        self.closed = True
        self._scope.cancel()

    def replace_by_newer_login(self) -> None:
        """Single login: REPLACED first (even past the outbox bound), then close 4001."""
        self.send_frame_nowait(_REPLACED, force=True)
        self.evict(CloseCode.REPLACED, "replaced by a newer login", "replaced")

    def send_frame_nowait(self, frame: bytes, force: bool = False, now: float | None = None) -> bool:
        """Queue an encoded frame. False if the connection is closing; a full outbox
        evicts it as a slow consumer (4003); past its credentials' expiry it is closed
        (4005) and gets nothing more. A room fanning out passes ``now`` (read once for
        all its members) as the time of this activity."""
        ws = self.ws
        if self.closed or ws is None or ws.close_sent:
            return False
        if now is None:
            now = trio.current_time()
        if now >= self._expires and not force:
            self.expire()
            return False
        try:
            ws.wire.write_nowait(ws.outgoing(frame), force=force)
        except OutboxFull:
            self.evict(CloseCode.SLOW_CONSUMER, "slow consumer: outbound queue overflowed", "slow_consumer")
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True  # the peer is gone; the reader sees it too
            self._scope.cancel()
            return False
        self.last_activity = now
        return True

    def spawn(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run ``task`` beside the reader, in this connection's nursery: it ends when
        the connection does (evicted or closed), never after."""
        if self._tasks is not None and not self.closed:
            self._tasks.start_soon(task)

    async def send_paced(self, frames: Sequence[bytes], keep: Callable[[], bool] | None = None) -> bool:
        """Queue ``frames`` in order at the pace the peer reads: before a frame that
        would take the unsent bytes past half the outbox bound, wait until the kernel
        has taken what is queued. For catching up (a long replay), where the whole
        would overflow the outbox that live traffic is bounded by. False once the
        connection is closing, or ``keep()`` says to stop (the rest is not sent);
        cancellation leaves no half frame."""
        half = self.deps.websocket.outbox_max_bytes // 2
        for frame in frames:
            ws = self.ws
            if self.closed or ws is None or ws.close_sent or (keep is not None and not keep()):
                return False
            if ws.wire.backlog_bytes and ws.wire.backlog_bytes + len(frame) > half:
                try:
                    await ws.wire.wait_send_all_might_not_block()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return False
                if keep is not None and not keep():
                    return False
            if not self.send_frame_nowait(frame):
                return False
        return True

    def send_message_nowait(self, payload: bytes) -> bool:
        return self.send_frame_nowait(text_frame(payload))

    def deliver_chat(self, conversation: str, msg_id: int, frame: bytes) -> bool:
        """A stored chat message for this user: :meth:`ChatDeliveries.deliver`."""
        if self.closed:
            return False
        deliveries = self.chat_deliveries or self.track_chat(replaying=False)
        return deliveries.deliver(conversation, msg_id, frame)

    def release_held(self) -> list[HeldMessage]:
        """For the offline replay: :meth:`ChatDeliveries.release_held`."""
        deliveries = self.chat_deliveries
        if deliveries is None:
            return []
        held = deliveries.release_held()
        if not held and not deliveries.unconfirmed and deliveries.confirm_due is None:
            self.chat_deliveries = None  # live with nothing to confirm: an idle connection keeps none
        return held

    def track_chat(self, replaying: bool) -> ChatDeliveries:
        """Start tracking chat deliveries; ``replaying``: hold them for the offline replay."""
        self.chat_deliveries = ChatDeliveries(self, self.deps.chat_config, replaying)
        return self.chat_deliveries

    def refuse(self, code: ErrorCode, message: str, close: int, reason: str, **details: object) -> None:
        """Send the error ``code`` (with ``details``), then close with ``close`` (the session is ending)."""
        self.send_message_nowait(error_message(code, message, **details))
        self.close_code, self.close_reason = close, reason

    # -- life cycle ---------------------------------------------------------

    async def run(self, stream: trio.abc.Stream, upgrade: UpgradeRequest, target: str,
                  headers: Sequence[tuple[bytes, bytes]], preread: bytes = b"") -> None:
        """Accept the validated ``upgrade`` (``preread``: bytes the front end read past
        the request head), serve the connection until it ends or is evicted, then
        close it (bounded). Outside cancellation does not reach inside (evict() does);
        a bug closes this connection with 1011 and is logged, never raised."""
        self._upgrade = (target, headers)  # until authenticated; then dropped
        del target, headers
        await self._run(stream, preread, lambda tasks: self._handshake_and_serve(tasks, upgrade))

    async def run_sse(self, stream: trio.abc.Stream, channel: SseChannel, chunked: bool,
                      response_headers: Sequence[tuple[str, str]], target: str,
                      headers: Sequence[tuple[bytes, bytes]]) -> None:
        """Serve the broker protocol over an SSE stream (the GET's ``stream``; ``chunked``
        for an HTTP/1.1 request) whose client sends by POST (``channel.post``), as
        :meth:`run` does over a WebSocket: same login, limits, timers and close."""
        self._upgrade = (target, headers)
        self.transport = "sse"
        del target, headers

        async def open_and_serve(transport_tasks: trio.Nursery) -> None:
            assert self.wire is not None
            if self._preauth is not None:
                self.wire.cork()  # the 200, the stream event and the first frame in one write
            channel.open(self.wire, chunked, response_headers, self._control_frame, transport_tasks.start_soon)
            self.ws = channel
            self.deps.metrics.connections_total.labels("sse").inc()
            await self._serve_protocol(transport_tasks)

        await self._run(stream, b"", open_and_serve)

    async def _run(self, stream: trio.abc.Stream, preread: bytes,
                   serve: Callable[[trio.Nursery], Awaitable[None]]) -> None:
        """What :meth:`run` and :meth:`run_sse` share: the hub's count, the wire, the
        scope evict() cancels, the bounded close, the cleanup."""
        deps = self.deps
        hub = deps.hub
        hub.register(self)
        try:
            async with trio.open_nursery() as transport_tasks:
                # shielded (set before any checkpoint): only evict() stops a session
                transport_tasks.cancel_scope.shield = True
                self._tasks = transport_tasks
                self.wire = WireStream(stream, preread, max_backlog=deps.websocket.outbox_max_bytes,
                                       spawn=transport_tasks.start_soon)
                del preread
                with self._scope:
                    try:
                        await serve(transport_tasks)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self.closed = True  # the peer vanished
                    except Exception:
                        # one connection's bug is this connection's 1011, never the server's
                        log.exception("%s failed", self.id)
                        if self.close_code is None:
                            self.close_code, self.close_reason = CloseCode.INTERNAL, "internal error"
                self.closed = True
                await self._close()
                transport_tasks.cancel_scope.cancel()  # a flush task, the replay
        finally:
            self.closed = True
            if self._commands is not None:
                self._commands.leave_all_nowait()
            if self.wire is not None:
                with trio.CancelScope(shield=True):
                    await self.wire.aclose()
            hub.unregister(self)
            await deps.login.release(self)

    async def _handshake_and_serve(self, transport_tasks: trio.Nursery, upgrade: UpgradeRequest) -> None:
        """The handler's ``serve``, or the broker protocol: log in, then read commands."""
        assert self.wire is not None and self._upgrade is not None
        if self._handler is not None:
            await self._handler.serve(self, upgrade, self._upgrade[0], transport_tasks)
            return
        config = self.deps.websocket
        token_in_request = self._preauth is not None or token_from_request(self._upgrade[1], self._upgrade[0]) is not None
        if token_in_request:
            self.wire.cork()  # the 101 and the first frame go out in one write
        self.accept(upgrade, choose_subprotocol(upgrade.subprotocols, config.subprotocols),
                    config.max_frame_bytes, MAX_PENDING, compress=config.compression)
        await self._serve_protocol(transport_tasks)

    async def _serve_protocol(self, transport_tasks: trio.Nursery) -> None:
        """The broker protocol on an accepted transport: log in, then read commands."""
        assert self.wire is not None
        try:
            admitted = await self.authenticate() and await self.deps.login.log_in(self)
        finally:
            self.wire.uncork()
        if not admitted:
            return
        self.start_timers()
        if self.chat_deliveries is not None and self.chat_deliveries.replaying:
            # beside reading: its pace is set by the client's pongs
            transport_tasks.start_soon(self.deps.chat.replay_offline, self)
        await self._read_loop()

    # -- what a handler uses (and start_timers) ------------------------------------

    @property
    def preauthenticated(self) -> Principal | None:
        """The principal the front end found in the request, until :meth:`authenticate`."""
        return self._preauth if isinstance(self._preauth, Principal) else None

    def accept(self, upgrade: UpgradeRequest, subprotocol: str | None, max_message_bytes: int,
               max_pending: int, compress: bool = False) -> None:
        """Queue the 101 answering ``upgrade``; ``ws`` is the client's WebSocket from now
        on, taking messages up to ``max_message_bytes`` (``max_pending``: see MAX_PENDING).
        ``compress``: accept a permessage-deflate offer (the broker endpoint; proxy
        routes relay frames as they are)."""
        assert self.wire is not None
        ws = ServerWebSocket(self.wire, max_message_bytes=max_message_bytes,
                             receive_bytes=self.deps.websocket.receive_buffer_bytes,
                             max_pending=max_pending, control_budget=self._control_frame)
        deflater = self.deps.deflater
        params = negotiate(upgrade.extensions) if compress and deflater is not None else None
        ws.accept(upgrade.key, subprotocol, (deflater, params) if deflater is not None and params is not None else None)
        self.ws = ws
        self.deps.metrics.connections_total.labels("websocket").inc()

    async def authenticate(self) -> bool:
        """docs/PROTOCOL.md section 2 (:meth:`Login.authenticate`); False once refused
        (the error is queued and the close code set)."""
        assert self._upgrade is not None
        target, headers = self._upgrade
        self._upgrade = None
        preauth, self._preauth = self._preauth, None
        self.principal = await self.deps.login.authenticate(self, preauth, target, headers)
        return self.principal is not None

    def admit_relay(self) -> bool:
        """After :meth:`authenticate` on a proxy route (:meth:`Login.admit_relay`): False
        once refused because the user is banned (the error is queued, the close code set)."""
        return self.deps.login.admit_relay(self)

    async def receive_message(self) -> str | bytes | None:
        """The client's next message, running the timers (after :meth:`start_timers`)
        while it waits; None once a timer has closed the connection. Raises
        ConnectionClosed once the WebSocket is closed. Cancelling it loses no input."""
        ws = self.ws
        assert ws is not None
        while True:
            message = await ws.receive_message(self._timer_due())
            if message is not None:
                self.last_activity = trio.current_time()
                return message
            if not await self._on_timer():
                return None

    # -- the connection's own steps -----------------------------------------------

    async def _close(self) -> None:
        """The close handshake (our close frame unless one was exchanged already),
        bounded by ``close_timeout``; the caller then drops the socket."""
        ws = self.ws
        if ws is None:
            return
        code = self.close_code if self.close_code is not None else CloseCode.NORMAL
        with trio.move_on_after(self.deps.close_timeout, shield=True):
            await ws.aclose(code, self.close_reason)

    def _admit(self, now: float) -> bool:
        """One message or control frame from the client takes a token. Without one:
        RATE_LIMITED and a strike; too many strikes close with 4008."""
        if self._bucket.take(now):
            return True
        self.deps.metrics.bad_requests.labels(ErrorCode.RATE_LIMITED.value).inc()
        self.send_message_nowait(error_message(ErrorCode.RATE_LIMITED, "too many messages: slow down"))
        if self._strikes is None:
            self._strikes = Strikes(self.deps.limits.rate_limit_strikes, self.deps.limits.rate_limit_window)
        if self._strikes.strike(now):
            self.evict(CloseCode.RATE_LIMITED, "rate limit exceeded repeatedly", "rate_limited")
        return False

    def _control_frame(self) -> bool:
        """A ping or an unsolicited pong from the client counts like a message,
        authenticated or not: a control-frame flood is cut off like a message flood.
        (A pong answering the broker's own ping is not charged: ServerWebSocket.)"""
        return not self.closed and self._admit(trio.current_time())

    async def ping_within(self, seconds: float) -> bool | None:
        """Ping after everything queued: True if answered within ``seconds`` (all of it was
        read), False if not, None if closed. Safe to cancel; works beside the reader."""
        if self.ws is None or self.closed:
            return None
        return await self.ws.ping_within(seconds)

    async def _read_loop(self) -> None:
        """Read and handle client messages until the peer closes, running the timers
        between them. A refused command is answered with its error; reading goes on."""
        metrics = self.deps.metrics
        while True:
            try:
                message = await self.receive_message()
            except ConnectionClosed as exc:
                if not exc.by_peer and exc.code in (1002, 1007, 1009):
                    log.info("%s closed with %d: %s", self.id, exc.code, exc.reason)
                return
            if message is None:
                return
            metrics.messages_in.labels(self.transport).inc()
            if not self._admit(self.last_activity):
                if self.closed:
                    return
                continue
            command: ClientCommand | None = None
            try:
                command = decode_client_message(message, self.deps.decode_limits)
                await self._handle(command)
            except ProtocolError as exc:
                metrics.bad_requests.labels(exc.code.value).inc()
                self.send_message_nowait(error_message(exc.code, exc.message, **refused_request(command)))

    async def _handle(self, command: ClientCommand) -> None:
        """``ping`` and a second ``auth`` here; every other command by :class:`Commands`."""
        if isinstance(command, Ping):
            self.send_message_nowait(pong_message())
        elif isinstance(command, Auth):
            await refresh_in_band(self, command.token)
        else:
            if self._commands is None:
                self._commands = Commands(self.deps.commands, self)
            await self._commands.handle(command)

    # -- credentials: expiry and refresh (broker/session/credentials.py) ----------

    @property
    def login(self) -> Login:
        return self.deps.login

    def _plan_expiry(self, principal: Principal) -> None:
        """When to warn (or ask the hook again) and when to close, from ``principal``'s
        expiry (Unix time, mapped once onto the trio clock); never for static tokens."""
        if principal.expires_at is None:
            self._warn_at = self._expires = math.inf
            return
        login = self.deps.login
        now = trio.current_time()
        remaining = principal.expires_at - time.time()
        self._expires = now + remaining + login.jwt_leeway
        # at most half of what is left: a short-lived token is not asked for again at once
        self._warn_at = now + remaining - min(login.refresh_before, max(0.0, remaining) / 2)

    def expire(self) -> None:
        """The credentials expired without a refresh: TOKEN_EXPIRED, then close 4005."""
        if self.closed:
            return
        self.send_frame_nowait(text_frame(error_message(ErrorCode.TOKEN_EXPIRED, TOKEN_EXPIRED_REASON)), force=True)
        self.evict(CloseCode.TOKEN_EXPIRED, TOKEN_EXPIRED_REASON, "token_expired")

    def past_expiry(self, now: float) -> bool:
        """For a relay about to forward to the client: True (and the connection expired)
        once its credentials have."""
        if now >= self._expires:
            self.expire()
            return True
        return False

    def _credentials_expiring(self) -> None:
        """``refresh_before`` ahead of expiry: a hook identity is extended by asking the
        hook again (beside the reader); a JWT client is told ``token_expiring`` (not on a
        proxy route, whose client speaks the upstream's protocol: it reconnects after 4005)."""
        principal = self.principal
        if principal is None or principal.expires_at is None:
            return
        if principal.kind == "hook":
            if self.deps.login.hook is not None:
                self.spawn(partial(refresh_by_hook, self, principal, self.deps.login.hook))
        elif self._handler is None:
            self.send_message_nowait(token_expiring_message(principal.expires_at))

    def apply_refresh(self, principal: Principal) -> None:
        """Take ``principal`` (verified, same user) as the connection's credentials: new
        expiry and claims, off the jobs they no longer allow, then ``token_refreshed``."""
        self.principal = principal
        self._plan_expiry(principal)
        if self._commands is not None:
            self._commands.leave_forbidden_nowait()
        if self._handler is None:
            self.send_message_nowait(token_refreshed_message(principal.expires_at))
        log.info("%s credentials refreshed (expire %s)", self.id, format_expiry(principal.expires_at))

    # -- timers: heartbeat, delivery confirmation, idle timeout -------------------
    #
    # A WebSocket ping every ``heartbeat_interval`` after the last pong, or ``confirm_delay``
    # after a chat delivery (its pong confirms everything queued before it); no pong within
    # ``heartbeat_timeout`` closes with 4002. No message either way for ``idle_timeout``
    # closes with 1000 "idle timeout", exactly then. No task of their own: the reader wakes
    # at the earliest deadline, when its ping is answered, and on ws.wake() (a delivery).

    def start_timers(self) -> None:
        """Start the heartbeat (:meth:`receive_message` runs it, the idle timeout and the
        credentials' expiry)."""
        self._next_beat = trio.current_time() + self.deps.websocket.heartbeat_interval
        if self.principal is not None:
            self._plan_expiry(self.principal)

    def _timer_due(self) -> float:
        config = self.deps.websocket
        due = min(self._next_beat, self.last_activity + config.idle_timeout, self._warn_at, self._expires)
        if self._ping is not None:
            return min(due, self._ping[1])  # one ping at a time: a confirmation waits for it
        deliveries = self.chat_deliveries
        if deliveries is not None and deliveries.confirm_due is not None:
            due = min(due, deliveries.confirm_due)
        return due

    async def _on_timer(self) -> bool:
        """What is due now; False once the session is closing."""
        assert self.ws is not None and self.wire is not None
        config = self.deps.websocket
        now = trio.current_time()
        if self.closed:
            return False
        if self.last_activity + config.idle_timeout <= now:
            self.evict(CloseCode.NORMAL, "idle timeout", "idle_timeout")
            return False
        if now >= self._expires:
            self.expire()
            return False
        if now >= self._warn_at:
            self._warn_at = math.inf
            self._credentials_expiring()
        if self._ping is not None:
            seq, deadline, mark = self._ping
            if self.ws.pings_answered >= seq:
                self._ping = None
                self._next_beat = now + config.heartbeat_interval
                if self.chat_deliveries is not None and self.chat_deliveries.unconfirmed:
                    await self._confirm_up_to(mark)
            elif now >= deadline:
                self.evict(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout", "heartbeat_timeout")
                return False
            return True
        deliveries = self.chat_deliveries
        confirm_due = deliveries.confirm_due if deliveries is not None else None
        if now >= self._next_beat or (confirm_due is not None and now >= confirm_due):
            if deliveries is not None:
                deliveries.confirm_due = None
            mark = self.wire.bytes_queued  # the ping goes after everything queued so far
            try:
                seq = self.ws.ping_nowait()
            except ConnectionClosed:
                return False
            self._ping = (seq, now + config.heartbeat_timeout, mark)
            self._next_beat = math.inf  # the next beat is planned when the pong arrives
            self.ws.wake_on_pong(seq)
        return True

    async def _confirm_up_to(self, mark: int) -> None:
        """Store what was queued before wire offset ``mark`` as delivered (its ping was
        answered); if the store fails, chat logs it and they are delivered again."""
        assert self.chat_deliveries is not None
        positions = self.chat_deliveries.confirmed_up_to(mark)
        if positions and self.user_id is not None:
            await self.deps.chat.confirm_delivered(self.user_id, positions)
