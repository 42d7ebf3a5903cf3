"""Conversations as room actors, persistence first (docs/PROTOCOL.md section 4).

A conversation (a private pair, a group, or ``all``) is a room actor under the chat
room supervisor (:class:`Conversations`). For each run of sends waiting in its
mailbox it commits the messages in one store write, numbered there (SQLite: from
:meth:`Conversations.allocate_msg_id`, the one process owning the file; PostgreSQL:
from its sequence, while the conversation is locked, for every node), and only then
delivers them to the recipients' connections and sends ``chat_ack`` to each sender.
A message that was acknowledged is in the database.

Delivery state is per user and conversation: a cursor that advances only when the
client has *confirmed* messages (a WebSocket pong to a ping queued after them, or a
``read``). On connect, a user gets what lies past its cursors from the store, in
order (:mod:`.service`); live messages that arrive meanwhile are held by the
connection and released after the replay, without duplicates.

Group membership lives in the group's room too (loaded on start, changed through it:
:mod:`.groups`), so every send is checked against the membership the room has at
that moment.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from typing import Any, Protocol

import attrs

from actors import Supervisor

from ..config.loader import ChatConfig
from ..hub.connections import ChatEndpoint, Hub
from ..hub.rooms import RoomActor, RoomsFull, RoomSupervisor, RoomUnavailable
from ..observability.metrics import Metrics
from ..protocols import ChatSend, ErrorCode, ProtocolError, error_message, text_frame
from ..protocols.chat import (
    BROADCAST_CONVERSATION,
    HISTORY_ENVELOPE_BYTES,
    SYSTEM_SENDER,
    chat_ack,
    chat_delivery,
    private_members,
    read_receipt,
)
from ..store import AnyStore, StoreError
from ..store import chat_sql as chat_store
from ..store.sql import Statement
from ..webhooks.events import CHAT_MESSAGE, CHAT_READ, conversation_key, json_data
from ..webhooks.sink import EventSink, NoWebhooks
from .groups import ChangeGroup, apply_group_change
from .local_delivery import deliver_here, recipients_here
from .order import Linked
from .relay import ChatRelay
from .replay import ReplayTarget
from .retries import RecentSends

log = logging.getLogger("broker.chat")


class Sender(Protocol):
    """Who sends a message and hears its fate: a chat session, or the server API
    waiting for its answer (broker/chat/backend.py). Gets ``chat_ack`` or an error."""

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


class Conversation(RoomActor):
    def __init__(self, conversation_id: str, conversations: Conversations) -> None:
        config = conversations.config
        super().__init__(conversation_id, conversations.rooms, config.room_inbox_size, config.room_idle_timeout)
        self.conversations = conversations
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
            found = await chat_store.group(self.conversations.store, self.key)
            if found is not None:
                self.exists = True
                self.name, members = found
                self.members = set(members)

    async def handle(self, command: Send | Read | ChangeGroup) -> Any:
        await self._reload_if_stale()
        if isinstance(command, Send):
            run, leftover = self.inbox.receive_run_nowait(
                command, lambda c: isinstance(c, Send), self.conversations.config.send_batch_max
            )
            await self.handle_batch(run, self._send(run))
            return leftover
        if isinstance(command, Read):
            await self._read(command)
        else:
            relay = self.conversations.relay
            await self.handle_batch([command], apply_group_change(self, command, self.conversations.store, relay))
        return None
    def reject(self, command: Any, error: Exception) -> None:
        if isinstance(command, Send):
            refuse(command, ErrorCode.UNAVAILABLE, "message not stored, send it again")
        else:
            super().reject(command, error)

    def _may_send(self, sender: str) -> bool:
        if sender == SYSTEM_SENDER and self.kind != "private":  # the server API: any group, and "all"
            return self.exists
        if self.kind == "broadcast":
            return any(fnmatch.fnmatchcase(sender, p) for p in self.conversations.config.broadcast_senders)
        return self.exists and sender in self.members

    async def _send(self, batch: list[Send]) -> None:
        now = time.time()
        sends: list[Send] = []
        retries: list[tuple[Send, int | None, int]] = []  # (a retry, its msgId if stored before, or its first's place)
        firsts: dict[tuple[str, str], int] = {}  # (sender, clientMsgId) -> place in `sends`
        for send in batch:
            if not self._may_send(send.sender):
                refuse(send, ErrorCode.FORBIDDEN, f"not a member of conversation {self.key}")
                continue
            client_msg_id = send.message.client_msg_id
            earlier = self.recent_sends.get(send.sender, client_msg_id)
            first = firsts.get((send.sender, client_msg_id), -1) if client_msg_id is not None else -1
            if earlier is not None or first >= 0:
                retries.append((send, earlier, first))
                continue
            # sized with the widest id it could get: the id is only known in the store's transaction
            size = len(chat_delivery(send.message, self.key, send.sender, WIDEST_MSG_ID, now))
            if size > self.conversations.max_message_bytes:
                refuse(send, ErrorCode.MESSAGE_TOO_BIG,
                        f"message is {size} bytes as delivered; the limit is {self.conversations.max_message_bytes}")
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
        webhooks = self.conversations.webhooks
        outbox = None
        if webhooks.wants(CHAT_MESSAGE):  # the events commit with the messages (may run in a worker thread)
            key = conversation_key(self.key)

            def outbox(messages: list[chat_store.StoredMessage]) -> list[Statement]:
                return [s for m in messages for s in webhooks.statements(CHAT_MESSAGE, key, m.payload)]
        try:
            messages = await chat_store.insert_messages(
                self.conversations.store, self.key, len(sends), render, pairs, self.conversations.allocate_msg_id,
                recipients=() if self.kind == "broadcast" else tuple(self.members), also=outbox,
            )
        except StoreError as exc:
            log.error("conversation %s: %d messages not stored: %s", self.key, len(sends), exc)
            for send in sends:
                refuse(send, ErrorCode.UNAVAILABLE, "message not stored, send it again")
            self._ack_retries(retries, None)
            return
        if outbox is not None:
            webhooks.committed()
        accepted = list(zip(sends, messages, strict=True))
        self._cursors_made = self._cursors_made or make_cursors
        if self._last_msg_id is not None:
            self._last_msg_id = accepted[-1][1].msg_id
        conversations = self.conversations
        relay = conversations.relay if conversations.relay is not None and conversations.relay.active else None
        delivered = 0
        if relay is not None:  # in the conversation's commit order, with the other nodes' messages
            members = None if self.kind == "broadcast" else sorted(self.members)
            delivered = relay.deliver_local(self.key, self.kind, members, _linked(accepted))
        for send, message in accepted:
            self.recent_sends.remember(send.sender, send.message.client_msg_id, message.msg_id)
            if relay is None:
                delivered += deliver_here(conversations.hub, self.key, self.kind, send.sender, self.members,
                                          message.msg_id, text_frame(message.payload))
            send.session.send_message_nowait(chat_ack(message.msg_id, self.key, send.message.client_msg_id))
        if relay is not None:
            await self._relay(accepted)
        conversations.metrics.messages_out.inc(delivered)
        conversations.metrics.chat_messages.inc(len(accepted))
        self._ack_retries(retries, messages)

    def _ack_retries(self, retries: list[tuple[Send, int | None, int]],
                     stored: list[chat_store.StoredMessage] | None) -> None:
        """Ack each retry with its first copy's msgId; refuse it as its first copy was
        refused when that copy was in this batch and not ``stored``."""
        for send, earlier, first in retries:
            msg_id = earlier if earlier is not None else (stored[first].msg_id if stored is not None else None)
            if msg_id is None:
                refuse(send, ErrorCode.UNAVAILABLE, "message not stored, send it again")
            else:
                send.session.send_message_nowait(chat_ack(msg_id, self.key, send.message.client_msg_id))

    async def _relay(self, accepted: list[tuple[Send, chat_store.StoredMessage]]) -> None:
        """Recipients on other nodes: one backplane message per sender's run."""
        assert self.conversations.relay is not None
        members = None if self.kind == "broadcast" else sorted(self.members)
        start = 0
        for end in range(1, len(accepted) + 1):
            if end == len(accepted) or accepted[end][0].sender != accepted[start][0].sender:
                batch = _linked(accepted[start:end])
                await self.conversations.relay.relay(self.key, self.kind, accepted[start][0].sender, members, batch)
                start = end

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
                self._last_msg_id = await chat_store.last_msg_id(self.conversations.store, self.key)
            if read.msg_id > self._last_msg_id:
                read.session.send_message_nowait(error_message(
                    ErrorCode.BAD_REQUEST, f"msgId {read.msg_id} is beyond the last message of {self.key}",
                    conversationId=self.key,
                ))
                return
            exists, position = await chat_store.read_position(self.conversations.store, read.reader, self.key,
                                                              read.msg_id)
            if not exists:  # msgIds are numbered across conversations: this one is another's
                read.session.send_message_nowait(error_message(
                    ErrorCode.BAD_REQUEST, f"msgId {read.msg_id} is not a message of {self.key}",
                    conversationId=self.key,
                ))
                return
            if read.msg_id <= position:
                return  # already read that far (a retry, or an older message): no receipt, nothing moves
            webhooks = self.conversations.webhooks
            events = webhooks.statements(CHAT_READ, conversation_key(self.key), json_data(
                {"conversationId": self.key, "userId": read.reader, "msgId": read.msg_id},
            )) if webhooks.wants(CHAT_READ) else []
            await chat_store.mark_read(self.conversations.store, read.reader, self.key, read.msg_id, also=events)
            if events:
                webhooks.committed()
        except StoreError:
            read.session.send_message_nowait(error_message(ErrorCode.UNAVAILABLE, "read position not stored"))
            return
        receipt = text_frame(read_receipt(self.key, read.reader, read.msg_id))
        for session in recipients_here(self.conversations.hub, self.kind, read.reader, self.members):
            session.send_frame_nowait(receipt)


def _linked(accepted: list[tuple[Send, chat_store.StoredMessage]]) -> list[Linked]:
    """Committed messages with their predecessors (a store shared by nodes links them)."""
    return [Linked(m.msg_id, m.prev_msg_id if m.prev_msg_id is not None else 0, send.sender, m.payload)
            for send, m in accepted]


def refuse(send: Send, code: ErrorCode, message: str) -> None:
    """Answer ``send`` with an error frame (its clientMsgId, if any, echoed)."""
    extra = {"clientMsgId": send.message.client_msg_id} if send.message.client_msg_id is not None else {}
    send.session.send_message_nowait(error_message(code, message, conversationId=send.message.conversation_id, **extra))




# -- the conversations' supervisor ---------------------------------------------


class Conversations:
    """The chat room supervisor and what every conversation shares: the store, the
    hub, the relay to other nodes, the config and the msgId counter (SQLite)."""

    def __init__(self, supervisor: Supervisor, store: AnyStore, hub: Hub, config: ChatConfig, metrics: Metrics,
                 max_frame_bytes: int, relay: ChatRelay | None = None, webhooks: EventSink | None = None) -> None:
        """``max_frame_bytes``: no frame sent to a client is larger. A message is at most
        that minus HISTORY_ENVELOPE_BYTES, so any one message fits in a history page.
        ``webhooks``: where ``chat.message`` and ``chat.read`` events are recorded, in the
        transaction that stores the message or the read position."""
        self.store = store
        self.webhooks: EventSink = webhooks if webhooks is not None else NoWebhooks()
        self.relay = relay  # recipients and group actors on other nodes (a cluster)
        if relay is not None:
            relay.on_group_changed = self._group_changed_elsewhere
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

    async def send_command(self, conversation: str, command: Send | Read) -> None:
        """Queue ``command`` in the conversation's room (waiting while its inbox is full);
        UNAVAILABLE if no room can take it."""
        try:
            await self.rooms.send(conversation, command)
        except RoomsFull as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, str(exc)) from None
        except RoomUnavailable:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "conversation unavailable, try again") from None
