"""Chat's entry points for sessions: send, read, history, presence of members, and
the offline replay of what a user missed (docs/PROTOCOL.md section 4).

Sends and reads go to their conversation's room (:mod:`.conversations`); what can be
answered without a room (history, membership) reads the store, so ids of
conversations that are not there (or not the user's) start no actor. Group
management is :mod:`.groups`.
"""

from __future__ import annotations

import logging
from typing import Any

from ..protocols import ChatSend, CloseCode, ErrorCode, HistoryRequest, ProtocolError, ReadReport, text_frame
from ..protocols.chat import (
    BROADCAST_CONVERSATION,
    GROUP,
    SYSTEM_SENDER,
    history_response,
    offline_complete,
    private_conversation_id,
    private_members,
)
from ..store import StoreError
from ..store import chat_sql as chat_store
from . import replay as chat_replay
from .conversations import ChatSession, Conversations, Read, Send, Sender, refuse

log = logging.getLogger("broker.chat")

NOTHING_WAITING = offline_complete(0, False)  # the same bytes for every login with nothing waiting


class Chat:
    """What sessions use of chat; shared by every connection."""

    def __init__(self, conversations: Conversations, replay_pacing: chat_replay.Pacing) -> None:
        self.conversations = conversations
        self.store = conversations.store
        self.config = conversations.config
        self.replay_pacing = replay_pacing

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
                and self.conversations.rooms.running(conversation) is None \
                and not await self._may_see(sender, conversation):
            # no actor for a group that is not there (or not the sender's): refused as the room would
            refuse(send, ErrorCode.FORBIDDEN, f"not a member of conversation {conversation}")
            return
        await self.conversations.send_command(conversation, send)

    async def read(self, session: ChatSession, report: ReadReport) -> None:
        """Forwarded to the conversation's room, which refuses a msgId beyond its last
        message. A conversation with no running room is checked in the store first, so
        ids of conversations that are not there (or not the reader's) start no actor."""
        reader = session.user_id
        assert reader is not None
        conversation = report.conversation_id
        if self.conversations.rooms.running(conversation) is None:
            if conversation == BROADCAST_CONVERSATION:
                raise ProtocolError(ErrorCode.FORBIDDEN, "read positions are not kept for conversation all")
            if not await self._may_see(reader, conversation):
                raise ProtocolError(ErrorCode.FORBIDDEN, f"not a member of conversation {conversation}")
            last = await chat_store.last_msg_id(self.store, conversation)
            if report.msg_id > last:
                raise ProtocolError(ErrorCode.BAD_REQUEST,
                                    f"msgId {report.msg_id} is beyond the last message of {conversation}")
        await self.conversations.send_command(conversation, Read(session, reader, report.msg_id))

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
                                                      self.conversations.max_message_bytes)
        return history_response(conversation, messages, has_more)

    # -- the offline replay --------------------------------------------------

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
