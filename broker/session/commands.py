"""The commands of an authenticated broker connection (docs/PROTOCOL.md sections 3-4):
join and leave jobs, presence, and the chat commands (send, history, read).

:class:`Commands` is one connection's handler, made on its first command; it owns
the set of jobs the connection joined, and leaves them when the connection ends. A
command the client may not give, or one a busy or unreachable service cannot serve,
raises :class:`~broker.protocols.ProtocolError` (the connection sends it as an error
frame and keeps reading). Cancelling a command (eviction) leaves the job set as it
was: a join is recorded once the room has answered it (a room drops a member that
closed at its next delivery).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from ..auth.tokens import Principal
from ..chat.conversations import ChatSession
from ..cluster import BackplaneUnavailable
from ..hub.rooms import RoomsFull, RoomUnavailable
from ..jobs.commands import CatchUp
from ..jobs.watchers import Identity, JobWatchers, identity_of
from ..protocols import (
    ChatSend,
    ClientCommand,
    ErrorCode,
    HistoryRequest,
    JoinJob,
    LeaveJob,
    PresenceRequest,
    ProtocolError,
    ReadReport,
    error_message,
    left_forbidden_message,
    left_message,
    presence_message,
)
from ..store import StoreError

MAX_CATCH_UP_ROUNDS = 8  # paced rounds of a join's replay before the rest is written at once

if TYPE_CHECKING:
    from ..chat.service import Chat
    from ..config.loader import JobsConfig
    from ..jobs.job_rooms import JobRooms


class CommandSession(ChatSession, Protocol):
    """What the commands use of their connection: a chat session (chat and rooms take
    it as it is) and the principal it logged in as."""

    @property
    def principal(self) -> Principal | None: ...

    def spawn(self, task: Callable[[], Awaitable[None]]) -> None: ...

    async def send_paced(self, frames: Sequence[bytes], keep: Callable[[], bool] | None = None) -> bool: ...


class OnlineUsers(Protocol):
    """What presence in a conversation uses of the backplane's logins role."""

    async def users_online(self, user_ids: list[str]) -> list[str]: ...


@attrs.frozen
class CommandDeps:
    """What the commands of every connection use, built once by the broker."""

    job_rooms: JobRooms
    chat: Chat
    online: OnlineUsers
    jobs: JobsConfig
    watchers: JobWatchers  # distinct jobs per identity, over all its connections
    replay_inline_bytes: int | None = None  # a join's replay beyond this is written paced (CatchUp); None: at once


def refused_request(command: object) -> dict[str, str]:
    """The fields that tie an error to the request it refuses (docs/PROTOCOL.md section 6):
    the ``jobId`` of a join, leave or job presence, the ``clientMsgId`` (and
    ``conversationId`` once known) of a chat send, ``request: "history"`` and the
    ``conversationId`` of a history request; empty for anything else."""
    job_id = getattr(command, "job_id", None)
    if isinstance(command, (JoinJob, LeaveJob, PresenceRequest)) and job_id:
        return {"jobId": job_id}
    if isinstance(command, HistoryRequest):  # the client rejects the history() waiting for it
        return {"request": "history", "conversationId": command.conversation_id}
    if isinstance(command, ChatSend):
        context = {"conversationId": command.conversation_id} if command.conversation_id else {}
        if command.client_msg_id:
            context["clientMsgId"] = command.client_msg_id
        return context
    return {}


def join_refusal(principal: Principal, job_id: str) -> str:
    """Why ``principal`` may not join ``job_id``, naming what would allow it."""
    if principal.is_user:
        how = ('its JWT needs a "jobs" claim that matches it (`broker token --claim \'jobs=["job-*"]\'`), '
               "or, for JWTs without the claim, [auth] jwt_default_jobs")
    else:
        how = "this static token's jobs do not match it ([auth] env_token_jobs, or the jobs of its [auth] static_tokens entry)"
    return f"not allowed to join job {job_id}: {how}"


class Commands:
    """The commands of one connection, past authentication (not ``ping``/``auth``,
    which the connection answers itself)."""

    __slots__ = ("_deps", "_session", "jobs", "_identity", "_catching_up")

    def __init__(self, deps: CommandDeps, session: CommandSession) -> None:
        self._deps = deps
        self._session = session
        self.jobs: set[str] | None = None  # made on the first join
        self._identity: Identity | None = None  # what its joins count against (made on the first join)
        self._catching_up: dict[str, object] = {}  # job -> the token of its running catch-up (see _catch_up)

    async def handle(self, command: ClientCommand) -> None:
        """Carry out ``command``; ProtocolError if refused."""
        session = self._session
        assert session.principal is not None
        if isinstance(command, CHAT_COMMANDS) and not session.principal.is_user:
            # chat identities are user ids: a shared token must not speak or read as a user of that name
            raise ProtocolError(ErrorCode.FORBIDDEN, "chat needs a user token (a JWT with a sub, e.g. from "
                                                     "`broker token --sub alice`); a static token only joins jobs")
        handler = _HANDLERS.get(type(command))
        if handler is not None:
            await handler(self, command)

    async def _send_chat(self, command: ChatSend) -> None:
        await self._deps.chat.send(self._session, command)

    async def _leave(self, command: LeaveJob) -> None:
        session = self._session
        if self.jobs and command.job_id in self.jobs:
            self.jobs.discard(command.job_id)
            self._catching_up.pop(command.job_id, None)  # its catch-up stops before its next frame
            self._release(command.job_id)
            await self._deps.job_rooms.leave(command.job_id, session)  # waits if the room is busy
        session.send_message_nowait(left_message(command.job_id))

    async def _history(self, command: HistoryRequest) -> None:
        session = self._session
        assert session.user_id is not None
        try:
            session.send_message_nowait(await self._deps.chat.history(session.user_id, command))
        except StoreError:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "history unavailable, try again") from None

    async def _read(self, command: ReadReport) -> None:
        await self._deps.chat.read(self._session, command)

    def leave_forbidden_nowait(self) -> None:
        """The credentials changed: off every job they no longer allow, each answered
        ``left`` with FORBIDDEN (never waits)."""
        session = self._session
        assert session.principal is not None
        for job_id in sorted(self.jobs or ()):
            if not session.principal.may_join(job_id):
                self.jobs.discard(job_id)  # type: ignore[union-attr]
                self._deps.job_rooms.leave_nowait(job_id, session)
                session.send_message_nowait(left_forbidden_message(job_id))

    def leave_all_nowait(self) -> None:
        """The connection ended: off every job room it joined (never waits)."""
        for job_id in self.jobs or ():
            self._release(job_id)
            self._deps.job_rooms.leave_nowait(job_id, self._session)
        self.jobs = None
        self._catching_up.clear()

    def _release(self, job_id: str) -> None:
        if self._identity is not None:
            self._deps.watchers.release(self._identity, job_id)

    async def _join(self, command: JoinJob) -> None:
        session = self._session
        assert session.principal is not None
        if not session.principal.may_join(command.job_id):
            raise ProtocolError(ErrorCode.FORBIDDEN, join_refusal(session.principal, command.job_id))
        if self.jobs is None:
            self.jobs = set()
        limit = self._deps.jobs.max_jobs_per_connection
        new = command.job_id not in self.jobs
        if new and len(self.jobs) >= limit:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"at most {limit} jobs per connection")
        if command.job_id in self._catching_up:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"already joining job {command.job_id} (its replay is on "
                                "its way): wait for joined, or leave it first")
        if new:
            if self._identity is None:
                self._identity = identity_of(session.principal, session.remote_host)
            if not self._deps.watchers.reserve(self._identity, command.job_id):
                raise ProtocolError(ErrorCode.BAD_REQUEST, (
                    f"at most {self._deps.watchers.max_jobs} jobs watched at once per identity (a user, or a "
                    "static token from one address): [jobs] max_jobs_per_identity"))
        try:
            answer = await self._deps.job_rooms.join(command.job_id, session, command.last_seq, command.last_epoch,
                                                     command.presence, self._deps.replay_inline_bytes)
        except BaseException as exc:
            if new:
                self._release(command.job_id)  # not joined: its place goes back
            if isinstance(exc, RoomsFull):
                raise ProtocolError(ErrorCode.UNAVAILABLE, str(exc)) from None
            if isinstance(exc, RoomUnavailable):
                raise ProtocolError(ErrorCode.UNAVAILABLE, "job room unavailable, try again") from None
            raise
        self.jobs.add(command.job_id)
        if isinstance(answer, CatchUp):
            token = self._catching_up[command.job_id] = object()
            session.spawn(lambda: self._catch_up(command, answer, token))

    async def _catch_up(self, command: JoinJob, answer: int | CatchUp, token: object) -> None:
        """A replay too large to write at once, written at the pace the client reads
        (:meth:`CommandSession.send_paced`) beside the connection's reader, then a join
        from the last seq written, until the rest fits in one write with ``joined``
        (each round replays only what was published meanwhile). After
        ``MAX_CATCH_UP_ROUNDS`` the room writes the rest at once: a client that cannot
        keep up with the job's rate is a slow consumer (4003) as it would be live. A
        leave stops it before its next frame; the connection's end cancels it."""
        job_id, session, job_rooms = command.job_id, self._session, self._deps.job_rooms

        def wanted() -> bool:
            return self._catching_up.get(job_id) is token

        try:
            rounds = 0
            while isinstance(answer, CatchUp):
                if not await session.send_paced(answer.frames, wanted) or not wanted():
                    return
                rounds += 1
                inline = None if rounds >= MAX_CATCH_UP_ROUNDS else self._deps.replay_inline_bytes
                answer = await job_rooms.join(job_id, session, answer.through_seq, command.last_epoch,
                                              command.presence, inline)
            if not wanted() and job_id not in (self.jobs or ()):
                job_rooms.leave_nowait(job_id, session)  # left while the last round was answered
        except RoomUnavailable:  # RoomsFull included: the room ended or no place is left
            if wanted() and self.jobs is not None:
                self.jobs.discard(job_id)
                self._release(job_id)
            session.send_message_nowait(error_message(ErrorCode.UNAVAILABLE, "job room unavailable, try again",
                                                      jobId=job_id))
        finally:
            if wanted():
                del self._catching_up[job_id]

    async def _presence(self, request: PresenceRequest) -> None:
        """Who is in a job this principal may join, or online among a conversation's
        members (the asker must be one). UNAVAILABLE if the backplane is unreachable."""
        session, deps = self._session, self._deps
        assert session.principal is not None and session.user_id is not None
        limit = deps.jobs.presence_list_max
        try:
            if request.job_id is not None:
                if not session.principal.may_join(request.job_id):
                    raise ProtocolError(ErrorCode.FORBIDDEN, join_refusal(session.principal, request.job_id))
                count, users = await deps.job_rooms.presence(request.job_id)
                session.send_message_nowait(presence_message("jobId", request.job_id, count, users))
                return
            conversation = request.conversation_id
            assert conversation is not None
            members = await deps.chat.members_for(session.user_id, conversation)
            if members is None:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"presence is not offered for conversation {conversation}")
            online = sorted(await deps.online.users_online(members))
            session.send_message_nowait(presence_message("conversationId", conversation, len(online), online[:limit]))
        except (StoreError, BackplaneUnavailable):
            raise ProtocolError(ErrorCode.UNAVAILABLE, "presence unavailable, try again") from None


CHAT_COMMANDS = (ChatSend, HistoryRequest, ReadReport)  # for users (JWT) only

# what each command does (``ping`` and ``auth`` are the connection's own)
_HANDLERS: dict[type, Callable[[Commands, Any], Awaitable[None]]] = {
    ChatSend: Commands._send_chat,
    JoinJob: Commands._join,
    LeaveJob: Commands._leave,
    HistoryRequest: Commands._history,
    ReadReport: Commands._read,
    PresenceRequest: Commands._presence,
}
