"""Chat messages (docs/PROTOCOL.md section 4): decoding, validation, conversation ids, and
the frames sent back. Pure functions.

Clients send chat messages with no ``type`` field; the broker recognises them by
``chatType``. Recipients get the same shape back, plus ``sendId`` (always the sender's
authenticated id, whatever the client put there), ``msgId`` and ``timestamp``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import attrs

from .codes import ErrorCode, ProtocolError
from .messages import ID_PATTERN, MAX_SEQ, encode, format_timestamp, timestamp_now
from .text import USER_ID_RULE, is_user_id

GROUP = 1
PRIVATE = 2
TEXT = 1
IMAGE = 2
BROADCAST_CONVERSATION = "all"
SYSTEM_SENDER = "system"  # the server API's own sender id: no token may take it (broker/auth/tokens.py)
HISTORY_ENVELOPE_BYTES = 1024  # a history page's head around its messages fits in this
_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@=+\-]*")  # fullmatch
_UNSAFE_SCHEMES = ("javascript", "data", "vbscript", "file")


@attrs.frozen
class ChatSend:
    chat_type: int
    conversation_id: str
    recv_id: str | None
    content: str
    content_type: int
    client_msg_id: str | None = None


@attrs.frozen
class HistoryRequest:
    conversation_id: str
    before_msg_id: int | None
    limit: int


@attrs.frozen
class ReadReport:
    conversation_id: str
    msg_id: int


def private_conversation_id(user_a: str, user_b: str) -> str:
    """The same id for the same pair, whatever the order: ``p:<len>:<first>:<second>``
    (the length prefix keeps ids with ``:`` in them from colliding)."""
    first, second = sorted((user_a, user_b))
    return f"p:{len(first)}:{first}:{second}"


def private_members(conversation_id: str) -> tuple[str, str] | None:
    """The two users of a private conversation id, or None if it is not one (only the
    form :func:`private_conversation_id` makes: users of 1-128 characters, in order)."""
    if not conversation_id.startswith("p:"):
        return None
    length_text, sep, rest = conversation_id[2:].partition(":")
    if not sep or not length_text.isdigit() or len(length_text) > 3:
        return None
    length = int(length_text)
    first, second = rest[:length], rest[length + 1:]
    if len(first) != length or rest[length:length + 1] != ":" or not first or not second:
        return None
    if first > second or not is_user_id(first) or not is_user_id(second):
        return None
    return first, second


def is_conversation_id(value: str) -> bool:
    """A private id, a group id (whole-string match) or ``all``."""
    if value.startswith("p:"):
        return private_members(value) is not None
    return ID_PATTERN.fullmatch(value) is not None


def is_group_id(value: str) -> bool:
    return value != BROADCAST_CONVERSATION and not value.startswith("p:") and ID_PATTERN.fullmatch(value) is not None


def _user_id(value: Any, field: str) -> str:
    if not is_user_id(value):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f'"{field}" must be {USER_ID_RULE}')
    return value


def validate_image_reference(content: str) -> None:
    """An image is an http(s) URL with a host, or an opaque reference (``oss/a.png``,
    ``file-id:abc``) with no spaces; never a script or data URL."""
    scheme = content.split(":", 1)[0].lower() if ":" in content else ""
    if scheme in ("http", "https"):
        parts = urlsplit(content)
        if not parts.netloc or any(c.isspace() for c in content):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "image content must be a valid http(s) URL or reference")
        return
    if scheme in _UNSAFE_SCHEMES or not _REFERENCE.fullmatch(content):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "image content must be a valid http(s) URL or reference")


def decode_chat_send(message: dict[str, Any], max_content_length: int) -> ChatSend:
    chat_type = message.get("chatType")
    if type(chat_type) is not int or chat_type not in (GROUP, PRIVATE):  # not 2.0, not True
        raise ProtocolError(ErrorCode.BAD_REQUEST, '"chatType" must be 1 (group) or 2 (private)')
    content_type = message.get("contentType", TEXT)
    if type(content_type) is not int or content_type not in (TEXT, IMAGE):
        raise ProtocolError(ErrorCode.BAD_REQUEST, '"contentType" must be 1 (text) or 2 (image)')
    content = message.get("content")
    if not isinstance(content, str) or not content:
        raise ProtocolError(ErrorCode.BAD_REQUEST, '"content" must be a non-empty string')
    if len(content) > max_content_length:
        raise ProtocolError(ErrorCode.MESSAGE_TOO_BIG, f'"content" is longer than {max_content_length} characters')
    if content_type == IMAGE:
        validate_image_reference(content)
    conversation_id = message.get("conversationId", "")
    if conversation_id is None:
        conversation_id = ""
    if not isinstance(conversation_id, str) or (conversation_id and len(conversation_id) > 300):
        raise ProtocolError(ErrorCode.BAD_REQUEST, '"conversationId" must be a string')
    recv_id = None
    if chat_type == PRIVATE:
        recv_id = _user_id(message.get("recvId"), "recvId")
    elif conversation_id and conversation_id != BROADCAST_CONVERSATION and not is_group_id(conversation_id):
        raise ProtocolError(ErrorCode.BAD_REQUEST, '"conversationId" is not a valid group id')
    client_msg_id = message.get("clientMsgId")
    if client_msg_id is not None and (not isinstance(client_msg_id, str) or len(client_msg_id) > 64):
        raise ProtocolError(ErrorCode.BAD_REQUEST, '"clientMsgId" must be a string of at most 64 characters')
    return ChatSend(chat_type, conversation_id, recv_id, content, content_type, client_msg_id)


def _conversation(message: dict[str, Any]) -> str:
    value = message.get("conversationId")
    if not isinstance(value, str) or not value:
        raise ProtocolError(ErrorCode.BAD_REQUEST, '"conversationId" is required')
    if not is_conversation_id(value):
        raise ProtocolError(ErrorCode.BAD_REQUEST, '"conversationId" is not a conversation id (a group id, '
                                                   '"all", or a private id as the broker sends it)')
    return value


def _msg_id(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_SEQ:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f'"{field}" must be a positive integer')
    return value


def decode_history(message: dict[str, Any], max_limit: int) -> HistoryRequest:
    before = message.get("beforeMsgId")
    limit = message.get("limit", 50)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= max_limit:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f'"limit" must be an integer from 1 to {max_limit}')
    return HistoryRequest(_conversation(message), None if before is None else _msg_id(before, "beforeMsgId"), limit)


def decode_read(message: dict[str, Any]) -> ReadReport:
    return ReadReport(_conversation(message), _msg_id(message.get("msgId"), "msgId"))


# -- server -> client -------------------------------------------------------


def chat_delivery(send: ChatSend, conversation_id: str, sender: str, msg_id: int, now: float) -> bytes:
    """What recipients receive (and what the store keeps, byte for byte)."""
    body: dict[str, Any] = {"conversationId": conversation_id, "sendId": sender}
    if send.recv_id is not None:
        body["recvId"] = send.recv_id
    body.update(
        chatType=send.chat_type, content=send.content, contentType=send.content_type,
        msgId=msg_id, timestamp=format_timestamp(now),
    )
    return encode(body)


def chat_ack(msg_id: int, conversation_id: str, client_msg_id: str | None) -> bytes:
    body: dict[str, Any] = {"type": "chat_ack", "msgId": msg_id, "conversationId": conversation_id}
    if client_msg_id is not None:
        body["clientMsgId"] = client_msg_id
    body["timestamp"] = timestamp_now()
    return encode(body)


def read_receipt(conversation_id: str, reader: str, msg_id: int) -> bytes:
    return encode({"type": "read_receipt", "conversationId": conversation_id, "userId": reader,
                   "msgId": msg_id, "timestamp": timestamp_now()})


def history_response(conversation_id: str, messages: list[bytes], has_more: bool) -> bytes:
    """``messages`` are stored payloads (JSON bytes), oldest first; spliced in as is.
    The frame is at most their size, plus a comma each, plus HISTORY_ENVELOPE_BYTES."""
    head = encode({"type": "history", "conversationId": conversation_id, "hasMore": has_more})
    return head[:-1] + b',"messages":[' + b",".join(messages) + b"]}"


def offline_complete(count: int, truncated: bool) -> bytes:
    """Extension: the offline replay on connect is done (``truncated``: older undelivered
    messages exist; page back with ``history``)."""
    return encode({"type": "offline_complete", "count": count, "truncated": truncated})
