"""Chat for the application's backend (the server API).

:func:`send_as`: a message sent as a user or as ``system`` goes through the
conversation's room like any session's send, so it is stored, acknowledged and
delivered the same way (and a repeated ``clientMsgId`` of the same sender is
acknowledged with the first copy's msgId, not stored again).
:func:`conversation_page`: a conversation's messages, newest first, read by the
backend (no membership: the API key is the backend's).
"""

from __future__ import annotations

import json

import trio

from ..protocols import ChatSend, ErrorCode, ProtocolError
from ..protocols.chat import BROADCAST_CONVERSATION, is_conversation_id, private_members
from ..store import chat_sql as chat_store
from .service import Chat


class _AnswerWaiter:
    """Stands in for a session as the message's :class:`~broker.chat.conversations.Sender`:
    keeps the room's one answer (``chat_ack`` or an error) for :func:`send_as`."""

    def __init__(self, user_id: str) -> None:
        self._user_id = user_id
        self.answer: bytes | None = None
        self.answered = trio.Event()

    @property
    def user_id(self) -> str | None:
        return self._user_id

    def send_message_nowait(self, payload: bytes) -> bool:
        if self.answer is None:
            self.answer = payload
            self.answered.set()
        return True


async def send_as(chat: Chat, sender: str, message: ChatSend) -> tuple[int, str]:
    """Send ``message`` as ``sender``; (msgId, conversationId) once it is stored.

    Raises ProtocolError with the room's refusal (FORBIDDEN: not a member;
    MESSAGE_TOO_BIG; UNAVAILABLE: not stored, send it again). Cancelled while
    waiting, the message may still be stored (a retry with the same ``clientMsgId``
    is then acknowledged with its msgId). The room always answers: a room that fails
    or stops refuses what it holds (UNAVAILABLE)."""
    waiter = _AnswerWaiter(sender)
    await chat.send(waiter, message)
    await waiter.answered.wait()
    assert waiter.answer is not None
    answer = json.loads(waiter.answer)
    if answer.get("type") == "chat_ack":
        return int(answer["msgId"]), str(answer["conversationId"])
    raise ProtocolError(ErrorCode(answer.get("code", ErrorCode.UNAVAILABLE.value)), str(answer.get("message", "")))


class NoSuchConversation(Exception):
    """A group id that names no group."""


async def conversation_page(chat: Chat, conversation_id: str, before: int | None, limit: int,
                            max_bytes: int) -> tuple[list[bytes], bool]:
    """Stored messages of ``conversation_id`` before msgId ``before``, newest first: at
    most ``limit`` and ``max_bytes``; and whether older ones exist. Raises
    ProtocolError (BAD_REQUEST: not a conversation id), NoSuchConversation, StoreError."""
    if not is_conversation_id(conversation_id):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "not a conversation id (a group id, \"all\", or a private id "
                                                   "as the broker sends it)")
    if private_members(conversation_id) is None and conversation_id != BROADCAST_CONVERSATION \
            and await chat_store.group(chat.store, conversation_id) is None:
        raise NoSuchConversation(f"no conversation {conversation_id}")
    messages, has_more = await chat_store.history(chat.store, conversation_id, before, limit, max_bytes)
    return messages[::-1], has_more
