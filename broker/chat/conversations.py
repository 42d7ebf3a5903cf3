"""Chat: conversations as room actors, persistence first (docs/PROTOCOL.md section 4).

A conversation (a private pair, a group, or ``all``) is a room actor under the chat
room supervisor. For each run of sends waiting in its mailbox it allocates msgIds,
commits the messages in one store write, and only then delivers them to the
recipients' connections and sends ``chat_ack`` to each sender. A message that was
acknowledged is in the database.

Delivery state is per user and conversation: a cursor that advances only when the
client has *confirmed* messages (a WebSocket pong to a ping queued after them, or a
``read``). On connect, a user gets what lies past its cursors from the store, in
order; live messages that arrive meanwhile are held by the connection and released
after the replay, without duplicates.

Group membership lives in the group's room too (loaded on start, changed through it),
so every send is checked against the membership the room has at that moment.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from typing import Any, Protocol

import attrs

from actors import Reply, Supervisor

from ..config.loader import ChatConfig
from ..hub.connections import ChatEndpoint, Hub
from ..hub.rooms import RoomActor, RoomsFull, RoomSupervisor, RoomUnavailable
from ..observability.metrics import Metrics
from ..protocols import (
    ChatSend,
    CloseCode,
    ErrorCode,
    HistoryRequest,
    ProtocolError,
    ReadReport,
    error_message,
    text_frame,
)
from ..protocols.chat import (
    BROADCAST_CONVERSATION,
    GROUP,
    HISTORY_ENVELOPE_BYTES,
    SYSTEM_SENDER,
    chat_ack,
    chat_delivery,
    history_response,
    is_group_id,
    offline_complete,
    private_conversation_id,
    private_members,
    read_receipt,
)
from ..protocols.text import USER_ID_RULE, is_user_id
from ..store import AnyStore, StoreError
from ..store import chat_sql as chat_store
from ..store.sql import Statement
from ..webhooks.events import CHAT_MESSAGE, CHAT_READ, conversation_key, json_data
from ..webhooks.sink import EventSink, NoWebhooks
from . import replay as chat_replay
from .order import Linked
from .relay import ChatRelay
from .replay import ReplayTarget
from .retries import RecentSends

log = logging.getLogger("broker.chat")


class Sender(Protocol):
    """Who sends a message and hears its fate: a chat session, or the server API
    waiting for its answer (broker/chat/server_send.py). Gets ``chat_ack`` or an error."""

    @property
    def user_id(self) -> str | None: ...

    def send_message_nowait(self, payload: bytes) -> bool: ...


class ChatSession(ChatEndpoint, ReplayTarget, Protocol):
    """What chat needs of a logged-in connection: a chat endpoint the hub routes to,
    a replay target for offline messages, its user, and a reply queued without waiting."""

    @property
    def user_id(self) -> str | None: ...

    def send_message_nowait(self, payload: bytes) -> bool: ...

WIDEST_MSG_ID = 2**63 - 1  # msgIds are signed 64-bit in both stores
NOTHING_WAITING = offline_complete(0, False)  # the same bytes for every login with nothing waiting


class GroupError(Exception):
    """A group operation was refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# -- conversation commands ---------------------------------------------------


@attrs.frozen
class Send:
    session: Sender
    sender: str
    message: ChatSend


@attrs.frozen
class Read:
    session: ChatSession
    reader: str
    msg_id: int


@attrs.frozen
class ChangeGroup:
    """Create, add, remove or delete, in the group's mailbox order."""

    action: str  # "create" | "add" | "remove" | "delete"
    users: tuple[str, ...]
    name: str
    reply: Reply[Any]


class Conversation(RoomActor):
    def __init__(self, conversation_id: str, chat: Chat) -> None:
        config = chat.config
        super().__init__(conversation_id, chat.rooms, config.room_inbox_size, config.room_idle_timeout)
        self.chat = chat
        pair = private_members(conversation_id)
        self.kind = "private" if pair else ("broadcast" if conversation_id == BROADCAST_CONVERSATION else "group")
        self.members: set[str] = set(pair) if pair else set()
        self.exists = self.kind != "group"
        self.name = ""
        self._cursors_made = False  # private: both users' cursor rows exist (they are never deleted)
        self._last_msg_id: int | None = None  # read from the store on the first `read`
        self.recent_sends = RecentSends()  # a retried clientMsgId is acked again, not stored twice
        self.stale = False  # the group changed through another node: load it again

    async def _reload_if_stale(self) -> None:
        if self.stale:
            self.stale = False
            self.exists, self.name, self.members = False, "", set()
            await self.load()

    async def load(self) -> None:
        if self.kind == "group":
            found = await chat_store.group(self.chat.store, self.key)
            if found is not None:
                self.exists = True
                self.name, members = found
                self.members = set(members)

    async def handle(self, command: Send | Read | ChangeGroup) -> Any:
        await self._reload_if_stale()
        if isinstance(command, Send):
            run, leftover = self.inbox.receive_run_nowait(
                command, lambda c: isinstance(c, Send), self.chat.config.send_batch_max
            )
            await self.handle_batch(run, self._send(run))
            return leftover
        if isinstance(command, Read):
            await self._read(command)
        else:
            await self.handle_batch([command], self._change_group(command))
        return None

    def reject(self, command: Any, error: Exception) -> None:
        if isinstance(command, Send):
            _refuse(command, ErrorCode.UNAVAILABLE, "message not stored, send it again")
        else:
            super().reject(command, error)

    def _may_send(self, sender: str) -> bool:
        if sender == SYSTEM_SENDER and self.kind != "private":  # the server API: any group, and "all"
            return self.exists
        if self.kind == "broadcast":
            return any(fnmatch.fnmatchcase(sender, p) for p in self.chat.config.broadcast_senders)
        return self.exists and sender in self.members

    async def _send(self, batch: list[Send]) -> None:
        now = time.time()
        sends: list[Send] = []
        retries: list[tuple[Send, int | None, int]] = []  # (a retry, its msgId if stored before, or its first's place)
        firsts: dict[tuple[str, str], int] = {}  # (sender, clientMsgId) -> place in `sends`
        for send in batch:
            if not self._may_send(send.sender):
                _refuse(send, ErrorCode.FORBIDDEN, f"not a member of conversation {self.key}")
                continue
            client_msg_id = send.message.client_msg_id
            earlier = self.recent_sends.get(send.sender, client_msg_id)
            first = firsts.get((send.sender, client_msg_id), -1) if client_msg_id is not None else -1
            if earlier is not None or first >= 0:
                retries.append((send, earlier, first))
                continue
            # sized with the widest id it could get: the id is only known in the store's transaction
            size = len(chat_delivery(send.message, self.key, send.sender, WIDEST_MSG_ID, now))
            if size > self.chat.max_message_bytes:
                _refuse(send, ErrorCode.MESSAGE_TOO_BIG,
                        f"message is {size} bytes as delivered; the limit is {self.chat.max_message_bytes}")
                continue
            if client_msg_id is not None:
                firsts[(send.sender, client_msg_id)] = len(sends)
            sends.append(send)
        if not sends:
            self._ack_retries(retries, [])
            return

        def render(ids: list[int]) -> list[chat_store.StoredMessage]:
            return [chat_store.StoredMessage(msg_id, self.key, send.sender,
                                             chat_delivery(send.message, self.key, send.sender, msg_id, now))
                    for send, msg_id in zip(sends, ids, strict=True)]

        make_cursors = self.kind == "private" and not self._cursors_made
        pairs = [(self.key, user) for user in self.members] if make_cursors else []
        webhooks = self.chat.webhooks
        outbox = None
        if webhooks.wants(CHAT_MESSAGE):  # the events commit with the messages (may run in a worker thread)
            key = conversation_key(self.key)

            def outbox(messages: list[chat_store.StoredMessage]) -> list[Statement]:
                return [s for m in messages for s in webhooks.statements(CHAT_MESSAGE, key, m.payload)]
        try:
            messages = await chat_store.insert_messages(
                self.chat.store, self.key, len(sends), render, pairs, self.chat.allocate_msg_id,
                recipients=() if self.kind == "broadcast" else tuple(self.members), also=outbox,
            )
        except StoreError as exc:
            log.error("conversation %s: %d messages not stored: %s", self.key, len(sends), exc)
            for send in sends:
                _refuse(send, ErrorCode.UNAVAILABLE, "message not stored, send it again")
            self._ack_retries(retries, None)
            return
        if outbox is not None:
            webhooks.committed()
        accepted = list(zip(sends, messages, strict=True))
        self._cursors_made = self._cursors_made or make_cursors
        if self._last_msg_id is not None:
            self._last_msg_id = accepted[-1][1].msg_id
        relay = self.chat.relay if self.chat.relay is not None and self.chat.relay.active else None
        delivered = 0
        if relay is not None:  # in the conversation's commit order, with the other nodes' messages
            members = None if self.kind == "broadcast" else sorted(self.members)
            delivered = relay.deliver_local(self.key, self.kind, members, _linked(accepted))
        for send, message in accepted:
            self.recent_sends.remember(send.sender, send.message.client_msg_id, message.msg_id)
            if relay is None:
                frame = text_frame(message.payload)
                for session in self._recipients(send.sender):
                    if self.kind == "broadcast":
                        delivered += session.send_frame_nowait(frame)
                    else:
                        delivered += session.deliver_chat(self.key, message.msg_id, frame)
            send.session.send_message_nowait(chat_ack(message.msg_id, self.key, send.message.client_msg_id))
        if relay is not None:
            await self._relay(accepted)
        self.chat.metrics.messages_out.inc(delivered)
        self.chat.metrics.chat_messages.inc(len(accepted))
        self._ack_retries(retries, messages)

    def _ack_retries(self, retries: list[tuple[Send, int | None, int]],
                     stored: list[chat_store.StoredMessage] | None) -> None:
        """Ack each retry with its first copy's msgId; refuse it as its first copy was
        refused when that copy was in this batch and not ``stored``."""
        for send, earlier, first in retries:
            msg_id = earlier if earlier is not None else (stored[first].msg_id if stored is not None else None)
            if msg_id is None:
                _refuse(send, ErrorCode.UNAVAILABLE, "message not stored, send it again")
            else:
                send.session.send_message_nowait(chat_ack(msg_id, self.key, send.message.client_msg_id))

    async def _relay(self, accepted: list[tuple[Send, chat_store.StoredMessage]]) -> None:
        """Recipients on other nodes: one backplane message per sender's run."""
        assert self.chat.relay is not None
        members = None if self.kind == "broadcast" else sorted(self.members)
        start = 0
        for end in range(1, len(accepted) + 1):
            if end == len(accepted) or accepted[end][0].sender != accepted[start][0].sender:
                batch = _linked(accepted[start:end])
                await self.chat.relay.relay(self.key, self.kind, accepted[start][0].sender, members, batch)
                start = end

    def _recipients(self, sender: str) -> list[ChatEndpoint]:
        """Logged-in broker-protocol sessions only (proxy sessions never log in)."""
        hub = self.chat.hub
        if self.kind == "broadcast":
            return hub.chat_recipients(excluding_user=sender)
        return [s for user in self.members if user != sender for s in hub.sessions_of(user)]

    async def _read(self, read: Read) -> None:
        """A read position moves only forward, to a message of this conversation: beyond
        the last one, or a msgId of another conversation, is refused (BAD_REQUEST); one at
        or below the reader's position is ignored. Either way no receipt is relayed and no
        cursor moves."""
        if self.kind == "broadcast" or read.reader not in self.members:
            read.session.send_message_nowait(
                error_message(ErrorCode.FORBIDDEN, f"not a member of conversation {self.key}")
            )
            return
        try:
            if self._last_msg_id is None or read.msg_id > self._last_msg_id:
                # looked up again before refusing: other nodes add messages to this conversation too
                self._last_msg_id = await chat_store.last_msg_id(self.chat.store, self.key)
            if read.msg_id > self._last_msg_id:
                read.session.send_message_nowait(error_message(
                    ErrorCode.BAD_REQUEST, f"msgId {read.msg_id} is beyond the last message of {self.key}",
                    conversationId=self.key,
                ))
                return
            exists, position = await chat_store.read_position(self.chat.store, read.reader, self.key, read.msg_id)
            if not exists:  # msgIds are numbered across conversations: this one is another's
                read.session.send_message_nowait(error_message(
                    ErrorCode.BAD_REQUEST, f"msgId {read.msg_id} is not a message of {self.key}",
                    conversationId=self.key,
                ))
                return
            if read.msg_id <= position:
                return  # already read that far (a retry, or an older message): no receipt, nothing moves
            webhooks = self.chat.webhooks
            events = webhooks.statements(CHAT_READ, conversation_key(self.key), json_data(
                {"conversationId": self.key, "userId": read.reader, "msgId": read.msg_id},
            )) if webhooks.wants(CHAT_READ) else []
            await chat_store.mark_read(self.chat.store, read.reader, self.key, read.msg_id, also=events)
            if events:
                webhooks.committed()
        except StoreError:
            read.session.send_message_nowait(error_message(ErrorCode.UNAVAILABLE, "read position not stored"))
            return
        receipt = text_frame(read_receipt(self.key, read.reader, read.msg_id))
        for session in self._recipients(read.reader):
            session.send_frame_nowait(receipt)

    async def _change_group(self, change: ChangeGroup) -> None:
        try:
            await self._apply_group_change(change)
        except StoreError as exc:
            change.reply.fail(GroupError(503, f"group change not stored: {exc}"))

    async def _apply_group_change(self, change: ChangeGroup) -> None:
        store = self.chat.store
        if self.kind != "group":
            change.reply.fail(GroupError(400, f"{self.key} is not a group id"))
            return
        if change.action == "create":
            if self.exists:
                change.reply.fail(GroupError(409, f"group {self.key} already exists"))
                return
            statements = chat_store.create_group_statements(self.key, change.name)
            statements += chat_store.add_members_statements(self.key, change.users)
            await store.write(statements, mail_for=change.users)
            self.exists, self.name, self.members = True, change.name, set(change.users)
        elif not self.exists:
            change.reply.fail(GroupError(404, f"no group {self.key}"))
            return
        elif change.action == "add":
            await store.write(chat_store.add_members_statements(self.key, change.users), mail_for=change.users)
            self.members.update(change.users)
        elif change.action == "remove":
            await store.write(chat_store.remove_members_statements(self.key, change.users))
            self.members.difference_update(change.users)
        elif change.action == "delete":
            await store.write(chat_store.delete_group_statements(self.key))
            self.exists, self.members = False, set()
        if self.chat.relay is not None and self.chat.relay.active:
            await self.chat.relay.group_changed(self.key)  # the other nodes' actors load it again
        change.reply.set(sorted(self.members))


def _linked(accepted: list[tuple[Send, chat_store.StoredMessage]]) -> list[Linked]:
    """Committed messages with their predecessors (a store shared by nodes links them)."""
    return [Linked(m.msg_id, m.prev_msg_id if m.prev_msg_id is not None else 0, send.sender, m.payload)
            for send, m in accepted]


def _refuse(send: Send, code: ErrorCode, message: str) -> None:
    extra = {"clientMsgId": send.message.client_msg_id} if send.message.client_msg_id is not None else {}
    send.session.send_message_nowait(error_message(code, message, conversationId=send.message.conversation_id, **extra))


# -- the service -------------------------------------------------------------


class Chat:
    """Chat's entry points for sessions, the HTTP API, the CLI and embedders."""

    def __init__(self, supervisor: Supervisor, store: AnyStore, hub: Hub, config: ChatConfig, metrics: Metrics,
                 replay_pacing: chat_replay.Pacing, max_frame_bytes: int, relay: ChatRelay | None = None,
                 webhooks: EventSink | None = None) -> None:
        """``max_frame_bytes``: no frame sent to a client is larger. A message is at most
        that minus HISTORY_ENVELOPE_BYTES, so any one message fits in a history page.
        ``webhooks``: where ``chat.message`` and ``chat.read`` events are recorded, in the
        transaction that stores the message or the read position."""
        self.store = store
        self.webhooks: EventSink = webhooks if webhooks is not None else NoWebhooks()
        self.relay = relay  # recipients and group actors on other nodes (a cluster)
        if relay is not None:
            relay.on_group_changed = self._group_changed_elsewhere
        self.replay_pacing = replay_pacing
        self.max_message_bytes = max_frame_bytes - HISTORY_ENVELOPE_BYTES
        self.hub = hub
        self.config = config
        self.metrics = metrics
        self.last_msg_id = 0
        self.rooms: RoomSupervisor[Conversation] = RoomSupervisor(
            supervisor, "conversation", lambda key: Conversation(key, self), metrics, config.max_rooms
        )

    def _group_changed_elsewhere(self, group_id: str) -> None:
        """A node changed ``group_id`` (sync, from the backplane's feed): its actor here,
        if running, loads the group again before its next command."""
        conversation = self.rooms.running(group_id)
        if conversation is not None:
            conversation.stale = True

    async def start(self) -> None:
        self.last_msg_id = await chat_store.max_msg_id(self.store)
        if self.relay is not None:  # before the node subscribes: what is newer comes live or from the store
            self.relay.order.floor = self.last_msg_id

    def allocate_msg_id(self) -> int:
        """Globally increasing; within a conversation, in the order messages are stored.
        Used with a store of this process only (SQLite); PostgreSQL's store numbers
        messages itself, for every node (``chat_store.insert_messages``)."""
        self.last_msg_id += 1
        return self.last_msg_id

    # -- from sessions -----------------------------------------------------

    async def send(self, session: Sender, message: ChatSend) -> None:
        """Queue ``message`` in its conversation; the room acks (or refuses) it later."""
        sender = session.user_id
        assert sender is not None
        if message.chat_type == GROUP:
            conversation = message.conversation_id or BROADCAST_CONVERSATION
        else:
            assert message.recv_id is not None
            if message.recv_id == sender:
                raise ProtocolError(ErrorCode.BAD_REQUEST, "recvId is the sender")
            conversation = private_conversation_id(sender, message.recv_id)
            if message.conversation_id and message.conversation_id != conversation:
                raise ProtocolError(ErrorCode.BAD_REQUEST, "conversationId does not belong to this sender and recvId")
        send = Send(session, sender, message)
        if conversation != BROADCAST_CONVERSATION and private_members(conversation) is None \
                and self.rooms.running(conversation) is None and not await self._may_see(sender, conversation):
            # no actor for a group that is not there (or not the sender's): refused as the room would
            _refuse(send, ErrorCode.FORBIDDEN, f"not a member of conversation {conversation}")
            return
        await self._send_command(conversation, send)

    async def read(self, session: ChatSession, report: ReadReport) -> None:
        """Forwarded to the conversation's room, which refuses a msgId beyond its last
        message. A conversation with no running room is checked in the store first, so
        ids of conversations that are not there (or not the reader's) start no actor."""
        reader = session.user_id
        assert reader is not None
        conversation = report.conversation_id
        if self.rooms.running(conversation) is None:
            if conversation == BROADCAST_CONVERSATION:
                raise ProtocolError(ErrorCode.FORBIDDEN, "read positions are not kept for conversation all")
            if not await self._may_see(reader, conversation):
                raise ProtocolError(ErrorCode.FORBIDDEN, f"not a member of conversation {conversation}")
            last = await chat_store.last_msg_id(self.store, conversation)
            if report.msg_id > last:
                raise ProtocolError(ErrorCode.BAD_REQUEST,
                                    f"msgId {report.msg_id} is beyond the last message of {conversation}")
        await self._send_command(conversation, Read(session, reader, report.msg_id))

    async def _send_command(self, conversation: str, command: Any) -> None:
        try:
            await self.rooms.send(conversation, command)
        except RoomsFull as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, str(exc)) from None
        except RoomUnavailable:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "conversation unavailable, try again") from None

    async def _may_see(self, user_id: str, conversation: str) -> bool:
        """Whether ``user_id`` is in ``conversation``, from the store (no actor). A group
        that does not exist is answered like one the user is not in."""
        pair = private_members(conversation)
        if pair is not None:
            return user_id in pair
        if conversation == BROADCAST_CONVERSATION:
            return True
        found = await self._group(conversation)
        return found is not None and (user_id in found[1] or user_id == SYSTEM_SENDER)

    async def _group(self, conversation: str) -> Any:
        try:
            return await chat_store.group(self.store, conversation)
        except StoreError:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "conversation unavailable, try again") from None

    async def members_for(self, user_id: str, conversation: str) -> list[str] | None:
        """The members of ``conversation`` (None for ``all``: everyone); FORBIDDEN unless
        ``user_id`` is one of them."""
        pair = private_members(conversation)
        if pair is not None:
            members = list(pair)
        elif conversation == BROADCAST_CONVERSATION:
            return None
        else:
            found = await self._group(conversation)
            members = list(found[1]) if found is not None else []
        if user_id not in members:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"not a member of conversation {conversation}")
        return members

    async def history(self, user_id: str, request: HistoryRequest) -> bytes:
        conversation = request.conversation_id
        if not await self._may_see(user_id, conversation):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"not a member of conversation {conversation}")
        messages, has_more = await chat_store.history(self.store, conversation, request.before_msg_id, request.limit,
                                                      self.max_message_bytes)
        return history_response(conversation, messages, has_more)

    def replay_now_if_nothing_waiting(self, session: ChatSession) -> bool:
        """When the store knows ``session``'s user has no undelivered message (the
        SQLite store, no query: :meth:`Store.no_mail_waiting`), finish the replay now:
        the session goes live and gets ``offline_complete``. Call it in the same step
        (no checkpoint) as the login that routes the user's messages to ``session``:
        whatever commits later is delivered live. False: run :meth:`replay_offline`."""
        user_id = session.user_id
        if user_id is None or not self.store.no_mail_waiting(user_id):
            return False
        held = session.release_held()  # nothing could be delivered yet: none held, and live now
        assert not held, held
        session.send_message_nowait(NOTHING_WAITING)
        return True

    async def replay_offline(self, session: ChatSession) -> None:
        """The newest ``offline_cap`` messages past the user's cursors (oldest first),
        the live ones held meanwhile, then ``offline_complete``, paced by the client's
        confirmations (:mod:`broker.chat.replay`), beside the session's reading. If
        the store fails, the held ones go and no ``offline_complete`` (the rest stays
        for the next connection); a bug closes this session with 1011, never more."""
        user_id = session.user_id
        assert user_id is not None

        async def confirm(positions: dict[str, int]) -> None:
            await self.confirm_delivered(user_id, positions)

        try:
            try:
                messages, truncated = await chat_store.undelivered(self.store, user_id, self.config.offline_cap)
            except StoreError as exc:
                log.error("%s: offline replay failed: %s", session.id, exc)
                await chat_replay.replay(session, [], self.replay_pacing, confirm)
                return
            stored = [(m.conversation_id, m.msg_id, text_frame(m.payload)) for m in messages]
            if await chat_replay.replay(session, stored, self.replay_pacing, confirm):
                session.send_message_nowait(offline_complete(len(messages), truncated))
        except Exception:
            log.exception("%s: offline replay failed", session.id)
            session.evict(CloseCode.INTERNAL, "internal error", "internal_error")

    async def confirm_delivered(self, user_id: str, positions: dict[str, int]) -> None:
        try:
            await chat_store.advance_delivered(self.store, user_id, positions)
        except StoreError as exc:  # they are delivered again next time: at least once
            log.warning("delivery positions of %s not stored: %s", user_id, exc)

    # -- groups (HTTP API, CLI, embedding) --------------------------------

    async def change_group(self, group_id: str, action: str, users: tuple[str, ...] = (), name: str = "") -> list[str]:
        if not is_group_id(group_id):
            raise GroupError(400, "group id must be 1-128 characters of letters, digits and ._:@- (not 'all' or 'p:...')")
        for user in users:
            if not is_user_id(user):
                raise GroupError(400, f"members must each be {USER_ID_RULE}")
        reply: Reply[list[str]] = Reply()
        try:
            await self.rooms.send(group_id, ChangeGroup(action, tuple(users), name or group_id, reply))
            return await reply.wait()
        except (RoomUnavailable, StoreError) as exc:
            raise GroupError(503, f"group change not stored: {exc}") from None

    async def create_group(self, group_id: str, members: list[str], name: str = "") -> list[str]:
        return await self.change_group(group_id, "create", tuple(members), name)

    async def add_members(self, group_id: str, members: list[str]) -> list[str]:
        return await self.change_group(group_id, "add", tuple(members))

    async def remove_members(self, group_id: str, members: list[str]) -> list[str]:
        return await self.change_group(group_id, "remove", tuple(members))

    async def delete_group(self, group_id: str) -> None:
        await self.change_group(group_id, "delete")

    async def group(self, group_id: str) -> dict[str, Any]:
        found = await chat_store.group(self.store, group_id) if is_group_id(group_id) else None
        if found is None:
            raise GroupError(404, f"no group {group_id}")
        return {"groupId": group_id, "name": found[0], "members": found[1]}

    async def groups_of(self, user_id: str) -> list[str]:
        return await chat_store.groups_of(self.store, user_id)
