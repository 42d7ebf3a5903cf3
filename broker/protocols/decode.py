"""One client frame on ``/ws`` to one command: system, job or chat."""

from __future__ import annotations

import attrs

from . import chat
from .codes import ErrorCode, ProtocolError
from .messages import ClientCommand, decode_json_object, decode_typed_message
from .presence import decode_presence


@attrs.frozen
class Limits:
    """Content limits the decoder enforces."""

    max_content_length: int = 4096
    max_history_limit: int = 200


def decode_client_message(text: str | bytes, limits: Limits = Limits()) -> ClientCommand:
    """Raises ProtocolError with the code and a message fit to send back.

    Chat messages carry no ``type`` (clients of the predecessors send none): they are
    recognised by ``chatType``; ``"type": "chat"`` is accepted too."""
    if isinstance(text, bytes):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "binary frames are not accepted on this endpoint")
    message = decode_json_object(text)
    kind = message.get("type")
    if (kind is None and "chatType" in message) or kind == "chat":
        return chat.decode_chat_send(message, limits.max_content_length)
    if kind == "history":
        return chat.decode_history(message, limits.max_history_limit)
    if kind == "read":
        return chat.decode_read(message)
    if kind == "presence":
        return decode_presence(message)
    return decode_typed_message(message)
