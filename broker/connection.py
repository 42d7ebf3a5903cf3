"""The per-connection actor for ``/ws``: handshake, authentication and login, then a
nursery of a flush task while there is a backlog | the offline chat replay while it
runs (broker/chat_replay.py), with this task reading the
:class:`~broker.websocket.ServerWebSocket` and running the timers (heartbeat,
delivery confirmation, idle timeout) between reads; and a bounded close.

Evicting a connection (newer login, missed heartbeat, slow consumer, rate limit,
shutdown) is one sync call, :meth:`Session.evict`: it records the close code and
cancels the session's scope; everything inside stops with it. The close that follows
is bounded by ``close_timeout``; then the socket is dropped whatever the peer does.

:meth:`Session.run` shields itself from outside cancellation: the broker stops
sessions by evicting them (1001 on shutdown), so every client gets a close frame
rather than a reset.

Chat deliveries are *tracked*: a delivery is confirmed when the client answers a ping
queued after it (or reports it read); only confirmed positions are stored as
delivered, so what a connection did not confirm is delivered again from the store on
the user's next connection.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import attrs
import trio

from .auth import AuthError, Principal, token_from_request
from .hub import login_limit, login_name, login_refusal
from .limits import Strikes, TokenBucket
from .protocols import (
    Auth,
    ChatSend,
    ClientCommand,
    CloseCode,
    ErrorCode,
    HistoryRequest,
    JoinJob,
    LeaveJob,
    Ping,
    PresenceRequest,
    ProtocolError,
    ReadReport,
    UpgradeRequest,
    connection_established,
    decode_client_message,
    error_message,
    left_message,
    pong_message,
    presence_message,
    text_frame,
)
from .rooms import RoomsFull, RoomUnavailable
from .store import StoreError
from .websocket import ConnectionClosed, ServerWebSocket, choose_subprotocol
from .wire import OutboxFull, WireStream

if TYPE_CHECKING:
    from .auth import Authenticator
    from .backplane import LoginClaim
    from .chat import Chat
    from .config import ChatConfig, JobsConfig, LimitsConfig, WebSocketConfig
    from .hub import Hub
    from .jobs import JobRooms
    from .metrics import Metrics
    from .protocols import Limits

log = logging.getLogger("broker.connection")

MAX_PENDING = 4  # client messages a ping waiter keeps while the session is busy; then it stops reading


class Logins(Protocol):
    """The backplane's part a session uses: cluster-wide logins and who is online."""

    clustered: bool

    async def claim_login(self, login: str, session_id: str, single: bool, limit: int | None) -> LoginClaim: ...

    async def release_login(self, login: str, session_id: str) -> None: ...

    async def users_online(self, user_ids: list[str]) -> list[str]: ...


@attrs.frozen
class SessionDeps:
    """What every session of a broker uses, built once by the broker (broker/app.py)."""

    hub: Hub
    authenticator: Authenticator
    logins: Logins
    job_rooms: JobRooms
    chat: Chat
    metrics: Metrics
    decode_limits: Limits
    websocket: WebSocketConfig
    limits: LimitsConfig
    chat_config: ChatConfig
    jobs: JobsConfig
    close_timeout: float


class Session:
    """One client WebSocket on the broker endpoint. Lazy (what a connection may never
    use is made on first use), and its own attributes are slots: an idle connection is
    what a broker holds by the thousand. It keeps a ``__dict__`` for subclasses'
    attributes (:class:`~broker.proxy.ProxySession`)."""

    __slots__ = ("id", "deps", "remote", "remote_host", "_preauth", "closed", "close_code", "close_reason",
                 "principal", "user_id", "jobs", "ws", "wire", "last_activity", "_scope", "_next_beat", "_ping", "_bucket", "_strikes", "_replaying", "_held", "_unconfirmed", "_confirm_due",
                 "_upgrade", "__dict__")

    def __init__(self, deps: SessionDeps, remote: str, remote_host: str = "",
                 preauth: Principal | AuthError | None = None) -> None:
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
        self.jobs: set[str] | None = None  # made on the first join
        self.ws: ServerWebSocket | None = None
        self.wire: WireStream | None = None
        self.last_activity = trio.current_time()
        self._scope = trio.CancelScope()  # handshake, authentication, reading: what evict() cancels
        self._next_beat = math.inf  # the next heartbeat ping, once reading starts
        self._ping: tuple[int, float, int] | None = None  # the ping awaiting its pong: (seq, deadline, wire offset)
        limits = deps.limits
        self._bucket = TokenBucket(limits.message_rate, limits.message_burst, self.last_activity)
        self._strikes: Strikes | None = None  # made on the first rate-limit strike
        self._upgrade: tuple[str, Sequence[tuple[bytes, bytes]]] | None = None
        # chat delivery tracking, made for the first chat delivery
        self._replaying = False
        self._held: list[tuple[str, int, bytes]] | None = None
        self._unconfirmed: deque[tuple[int, str, int]] | None = None  # (wire offset, conversation, msgId)
        self._confirm_due: float | None = None

    # -- what rooms and the hub call (sync, never blocks) -----------------

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
        self.send_frame_nowait(
            text_frame(error_message(ErrorCode.REPLACED, "replaced by a newer login of the same user")), force=True
        )
        self.evict(CloseCode.REPLACED, "replaced by a newer login", "replaced")

    def send_frame_nowait(self, frame: bytes, force: bool = False, now: float | None = None) -> bool:
        """Queue an encoded frame. False if the connection is closing; a full outbox
        evicts it as a slow consumer (4003). A room fanning out passes ``now`` (read
        once for all its members) as the time of this activity."""
        ws = self.ws
        if self.closed or ws is None or ws.close_sent:
            return False
        try:
            ws.wire.write_nowait(frame, force=force)
        except OutboxFull:
            self.evict(CloseCode.SLOW_CONSUMER, "slow consumer: outbound queue overflowed", "slow_consumer")
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True  # the peer is gone; the reader sees it too
            self._scope.cancel()
            return False
        self.last_activity = trio.current_time() if now is None else now
        return True

    def send_message_nowait(self, payload: bytes) -> bool:
        return self.send_frame_nowait(text_frame(payload))

    def deliver_chat(self, conversation: str, msg_id: int, frame: bytes) -> bool:
        """A stored chat message for this user: held during the offline replay, else
        queued and tracked until the client confirms it."""
        if self.closed:
            return False
        if self._replaying:
            if self._held is None:
                self._held = []
            if len(self._held) >= self.deps.chat_config.held_max:
                self.evict(CloseCode.SLOW_CONSUMER, "slow consumer: too many messages while syncing", "slow_consumer")
                return False
            self._held.append((conversation, msg_id, frame))
            return True
        return self._deliver_tracked(conversation, msg_id, frame)

    def _deliver_tracked(self, conversation: str, msg_id: int, frame: bytes) -> bool:
        if not self.send_frame_nowait(frame):
            return False
        assert self.wire is not None
        if self._unconfirmed is None:
            self._unconfirmed = deque()
        if len(self._unconfirmed) >= self.deps.chat_config.held_max:
            self.evict(CloseCode.SLOW_CONSUMER, "slow consumer: deliveries not confirmed", "slow_consumer")
            return False
        self._unconfirmed.append((self.wire.bytes_queued, conversation, msg_id))
        if self._confirm_due is None:  # the reader pings confirm_delay from now
            self._confirm_due = trio.current_time() + self.deps.chat_config.confirm_delay
            if self.ws is not None:
                self.ws.wake()  # to take the earlier deadline
        return True

    def release_held(self) -> list[tuple[str, int, bytes]]:
        """For the offline replay (broker/chat_replay.py): the live messages held so far;
        when none is held, stop holding (live deliveries are tracked from now on).
        Sync: no delivery can slip in between the check and going live."""
        held, self._held = self._held or [], None
        if not held:
            self._replaying = False
        return held

    # -- life cycle ---------------------------------------------------------

    async def run(self, stream: trio.abc.Stream, upgrade: UpgradeRequest, target: str,
                  headers: Sequence[tuple[bytes, bytes]], preread: bytes = b"") -> None:
        """Accept the validated ``upgrade`` (``preread``: bytes the front end read past
        the request head), serve the connection until it ends or is evicted, then
        close it (bounded)."""
        self._upgrade = (target, headers)  # until authenticated; then dropped
        del target, headers
        deps = self.deps
        hub = deps.hub
        hub.register(self)
        try:
            async with trio.open_nursery() as transport_tasks:
                # shielded (set before any checkpoint): only evict() stops a session
                transport_tasks.cancel_scope.shield = True
                self.wire = WireStream(stream, preread, max_backlog=deps.websocket.outbox_max_bytes,
                                       spawn=transport_tasks.start_soon)
                del preread
                with self._scope:
                    try:
                        await self._handshake_and_serve(transport_tasks, upgrade)
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
            for job_id in self.jobs or ():
                self.deps.job_rooms.leave_nowait(job_id, self)
            if self.wire is not None:
                with trio.CancelScope(shield=True):
                    await self.wire.aclose()
            hub.unregister(self)
            if self.user_id is not None and self.principal is not None:
                with trio.move_on_after(deps.close_timeout, shield=True):
                    await self.deps.logins.release_login(login_name(self.principal.login_key), self.id)

    def _websocket(self, max_message_bytes: int, max_pending: int) -> ServerWebSocket:
        assert self.wire is not None
        return ServerWebSocket(self.wire, max_message_bytes=max_message_bytes,
                               receive_bytes=self.deps.websocket.receive_buffer_bytes,
                               max_pending=max_pending, control_budget=self._control_frame)

    async def _handshake_and_serve(self, transport_tasks: trio.Nursery, upgrade: UpgradeRequest) -> None:
        config = self.deps.websocket
        assert self.wire is not None and self._upgrade is not None
        token_in_request = self._preauth is not None or token_from_request(self._upgrade[1], self._upgrade[0]) is not None
        if token_in_request:
            self.wire.cork()  # the 101 and the first frame go out in one write
        ws = self._websocket(config.max_frame_bytes, MAX_PENDING)
        ws.accept(upgrade.key, choose_subprotocol(upgrade.subprotocols, config.subprotocols))
        self.ws = ws
        self.deps.metrics.connections_total.inc()
        try:
            admitted = await self._authenticate() and await self._login()
        finally:
            self.wire.uncork()
        if not admitted:
            return
        self._start_timers()
        if self._replaying:  # beside reading: its pace is set by the client's pongs
            transport_tasks.start_soon(self.deps.chat.replay_offline, self)
        await self._read_loop()

    async def _close(self) -> None:
        """The close handshake (our close frame unless one was exchanged already),
        bounded by ``close_timeout``; the caller then drops the socket."""
        ws = self.ws
        if ws is None:
            return
        code = self.close_code if self.close_code is not None else CloseCode.NORMAL
        with trio.move_on_after(self.deps.close_timeout, shield=True):
            await ws.aclose(code, self.close_reason)

    def _refuse(self, code: ErrorCode, message: str, close: int, reason: str) -> None:
        self.send_message_nowait(error_message(code, message))
        self.close_code, self.close_reason = close, reason

    async def _authenticate(self) -> bool:
        """docs/PROTOCOL.md section 2. On failure: UNAUTHORIZED, then close 1008."""
        assert self.ws is not None and self._upgrade is not None
        target, headers = self._upgrade
        self._upgrade = None
        reason = "no token"
        if isinstance(self._preauth, Principal):
            self.principal = self._preauth
        elif isinstance(self._preauth, AuthError):
            reason = self._preauth.reason
        else:
            token = token_from_request(headers, target)
            if token is None:
                token, reason = await self._auth_frame()
            if token is not None:
                try:
                    self.principal = self.deps.authenticator.authenticate(token)
                except AuthError as exc:
                    reason = exc.reason
        self._preauth = None
        if self.principal is None:
            log.info("%s authentication refused from %s: %s", self.id, self.remote, reason)
            self.deps.metrics.auth_failures.inc()
            self._refuse(ErrorCode.UNAUTHORIZED, "Authentication failed", CloseCode.POLICY, "authentication failed")
            return False
        return True

    async def _auth_frame(self) -> tuple[str | None, str]:
        """The token of a first ``{"type":"auth"}`` frame within the auth timeout."""
        assert self.ws is not None
        timeout = self.deps.websocket.auth_timeout
        with trio.move_on_after(timeout):
            try:
                first = await self.ws.receive_message()
                while first is None:  # woken for a timer: the auth timeout is this scope's own
                    first = await self.ws.receive_message()
            except ConnectionClosed:
                return None, "closed before authenticating"
            try:
                command = decode_client_message(first)
            except ProtocolError:
                return None, "first frame was not valid"
            if isinstance(command, Auth):
                return command.token, ""
            return None, "first frame was not an auth frame"
        return None, f"no auth frame within {timeout:g}s"

    async def _login(self) -> bool:
        """Route the user's messages here. The backplane decides, cluster-wide: with
        single login this connection takes over from the user's older ones (those here
        are replaced now, those on other nodes by their node); otherwise it is refused
        beyond the per-user limit. If the backplane is unreachable: UNAVAILABLE, 1013."""
        assert self.principal is not None
        deps = self.deps
        hub = deps.hub
        user_id = self.principal.user_id
        per_user, single_login = deps.limits.max_connections_per_user, deps.chat_config.single_login
        refusal = login_refusal(hub, self.principal, per_user, single_login)
        if refusal is not None:
            self._refuse(ErrorCode.RATE_LIMITED, refusal, CloseCode.POLICY, refusal)
            return False
        single = single_login and self.principal.is_user
        logins = deps.logins
        try:
            claim = await logins.claim_login(login_name(self.principal.login_key), self.id, single,
                                                login_limit(self.principal, per_user, single_login))
        except StoreError as exc:
            log.warning("%s: login of %s not recorded: %s", self.id, user_id, exc)
            self._refuse(ErrorCode.UNAVAILABLE, "logins unavailable, try again", CloseCode.TRY_AGAIN_LATER,
                         "try again later")
            return False
        if not claim.admitted:
            reason = "too many connections for this user" if self.principal.is_user else "too many connections on this token"
            self._refuse(ErrorCode.RATE_LIMITED, reason, CloseCode.POLICY, reason)
            return False
        self.user_id = user_id
        self._replaying = self._syncs_offline()
        # no await from here on: routing and replacing happen in one step. In a cluster
        # the backplane decides who is replaced (on any node); here, the hub does.
        for older in hub.login(self.principal.login_key, self, single and not logins.clustered):
            older.replace_by_newer_login()
        hub.evict_replaced(claim.replaced)
        interval_ms = int(deps.websocket.heartbeat_interval * 1000)
        self.send_message_nowait(connection_established(self.id, user_id, interval_ms))
        if self._replaying:  # nothing waiting in the store: live now, in the same write as the 101
            deps.chat.replay_now_if_nothing_waiting(self)  # else the replay task runs once admitted
        log.info("%s connected as %s (%s) from %s", self.id, user_id, self.principal.kind, self.remote)
        return True

    def _syncs_offline(self) -> bool:
        """Offline delivery is for users (JWT); static tokens are shared service identities."""
        return self.principal is not None and self.principal.is_user

    def _admit(self, now: float) -> bool:
        """One message or control frame from the client takes a token. Without one:
        RATE_LIMITED and a strike; too many strikes close with 4008."""
        if self._bucket.take(now):
            return True
        self.deps.metrics.bad_requests.labels(ErrorCode.RATE_LIMITED.value).inc()
        self.send_message_nowait(error_message(ErrorCode.RATE_LIMITED, "too many messages: slow down"))
        if self._strikes is None:
            limits = self.deps.limits
            self._strikes = Strikes(limits.rate_limit_strikes, limits.rate_limit_window)
        if self._strikes.strike(now):
            self.evict(CloseCode.RATE_LIMITED, "rate limit exceeded repeatedly", "rate_limited")
        return False

    def _control_frame(self) -> bool:
        """A ping or pong from the client counts like a message, authenticated or not:
        a control-frame flood is cut off like a message flood."""
        return not self.closed and self._admit(trio.current_time())

    async def ping_within(self, seconds: float) -> bool | None:
        """Ping after everything queued so far: True if the client answered within
        ``seconds`` (it has then read all of it), False if not, None if the connection
        is closed. Safe to cancel. Works whether or not another task is reading."""
        if self.ws is None or self.closed:
            return None
        return await self.ws.ping_within(seconds)

    async def _read_loop(self) -> None:
        """Read and handle client messages until the peer closes; between messages,
        run the timers (the reader wakes at their deadlines)."""
        assert self.ws is not None
        metrics = self.deps.metrics
        while True:
            try:
                message = await self.ws.receive_message(self._timer_due())
            except ConnectionClosed as exc:
                if not exc.by_peer and exc.code in (1002, 1007, 1009):
                    log.info("%s closed with %d: %s", self.id, exc.code, exc.reason)
                return
            if message is None:
                if not await self._on_timer():
                    return
                continue
            now = self.last_activity = trio.current_time()
            metrics.messages_in.inc()
            if not self._admit(now):
                if self.closed:
                    return
                continue
            try:
                await self._handle(decode_client_message(message, self.deps.decode_limits))
            except ProtocolError as exc:
                metrics.bad_requests.labels(exc.code.value).inc()
                self.send_message_nowait(error_message(exc.code, exc.message))

    async def _handle(self, command: ClientCommand) -> None:
        assert self.principal is not None
        if isinstance(command, (ChatSend, HistoryRequest, ReadReport)) and not self.principal.is_user:
            # chat identities are user ids: a shared token must not speak or read as a user of that name
            raise ProtocolError(ErrorCode.FORBIDDEN, "chat needs a user token (JWT); a static token only joins jobs")
        if isinstance(command, ChatSend):
            await self.deps.chat.send(self, command)
        elif isinstance(command, Ping):
            self.send_message_nowait(pong_message())
        elif isinstance(command, JoinJob):
            await self._join(command)
        elif isinstance(command, LeaveJob):
            if self.jobs and command.job_id in self.jobs:
                self.jobs.discard(command.job_id)
                await self.deps.job_rooms.leave(command.job_id, self)  # waits if the room is busy
            self.send_message_nowait(left_message(command.job_id))
        elif isinstance(command, HistoryRequest):
            assert self.user_id is not None
            try:
                self.send_message_nowait(await self.deps.chat.history(self.user_id, command))
            except StoreError:
                raise ProtocolError(ErrorCode.UNAVAILABLE, "history unavailable, try again") from None
        elif isinstance(command, ReadReport):
            await self.deps.chat.read(self, command)
        elif isinstance(command, PresenceRequest):
            await self._presence(command)
        elif isinstance(command, Auth):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "already authenticated")

    async def _presence(self, request: PresenceRequest) -> None:
        """Who is in a job this principal may join, or online among a conversation's
        members (the asker must be one). UNAVAILABLE if the backplane is unreachable."""
        assert self.principal is not None and self.user_id is not None
        limit = self.deps.jobs.presence_list_max
        try:
            if request.job_id is not None:
                if not self.principal.may_join(request.job_id):
                    raise ProtocolError(ErrorCode.FORBIDDEN, f"not allowed to join job {request.job_id}")
                count, users = await self.deps.job_rooms.presence(request.job_id)
                self.send_message_nowait(presence_message("jobId", request.job_id, count, users))
                return
            conversation = request.conversation_id
            assert conversation is not None
            members = await self.deps.chat.members_for(self.user_id, conversation)
            if members is None:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"presence is not offered for conversation {conversation}")
            online = sorted(await self.deps.logins.users_online(members))
            self.send_message_nowait(presence_message("conversationId", conversation, len(online), online[:limit]))
        except StoreError:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "presence unavailable, try again") from None

    async def _join(self, command: JoinJob) -> None:
        assert self.principal is not None
        if not self.principal.may_join(command.job_id):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"not allowed to join job {command.job_id}")
        if self.jobs is None:
            self.jobs = set()
        limit = self.deps.jobs.max_jobs_per_connection
        if command.job_id not in self.jobs and len(self.jobs) >= limit:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"at most {limit} jobs per connection")
        try:
            await self.deps.job_rooms.join(command.job_id, self, command.last_seq, command.last_epoch,
                                             command.presence)
        except RoomsFull as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, str(exc)) from None
        except RoomUnavailable:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "job room unavailable, try again") from None
        self.jobs.add(command.job_id)

    # -- timers: heartbeat, delivery confirmation, idle timeout -------------------
    #
    # A WebSocket ping every ``heartbeat_interval`` after the last pong, or
    # ``confirm_delay`` after a chat delivery (its pong confirms everything queued
    # before it); no pong within ``heartbeat_timeout`` closes with 4002. No message
    # either way for ``idle_timeout`` closes with 1000 "idle timeout", exactly at the
    # last activity's deadline. No task of their own: the reader wakes at the
    # earliest deadline (receive_message(deadline)), when a ping it waits for is
    # answered, and when a delivery brings the confirmation forward (ws.wake()).

    def _start_timers(self) -> None:
        self._next_beat = trio.current_time() + self.deps.websocket.heartbeat_interval

    def _timer_due(self) -> float:
        config = self.deps.websocket
        due = min(self._next_beat, self.last_activity + config.idle_timeout)
        if self._ping is not None:
            return min(due, self._ping[1])  # one ping at a time: a confirmation waits for it
        if self._confirm_due is not None:
            due = min(due, self._confirm_due)
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
        if self._ping is not None:
            seq, deadline, mark = self._ping
            if self.ws.pings_answered >= seq:
                self._ping = None
                self._next_beat = now + config.heartbeat_interval
                if self._unconfirmed:
                    await self._confirm_up_to(mark)
            elif now >= deadline:
                self.evict(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout", "heartbeat_timeout")
                return False
            return True
        if now >= self._next_beat or (self._confirm_due is not None and now >= self._confirm_due):
            self._confirm_due = None
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
        positions: dict[str, int] = {}
        unconfirmed = self._unconfirmed
        while unconfirmed and unconfirmed[0][0] <= mark:
            _, conversation, msg_id = unconfirmed.popleft()
            positions[conversation] = max(positions.get(conversation, 0), msg_id)
        if positions and self.user_id is not None:
            await self.deps.chat.confirm_delivered(self.user_id, positions)
