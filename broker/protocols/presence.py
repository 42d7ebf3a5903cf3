"""Presence frames (an extension of docs/PROTOCOL.md): who is in a job room or online in a
conversation. Pure: no trio, no sockets.

Client asks::

    {"type":"presence","jobId":"job-1"}
    {"type":"presence","conversationId":"team-a"}

Server answers (``users``: sorted, at most the configured bound; ``count``: all)::

    {"type":"presence","jobId":"job-1","count":2,"users":["alice","bob"]}

A member that joined with ``{"type":"join_job","jobId":"job-1","presence":true}`` gets
that answer after ``joined``, then a frame per change::

    {"type":"presence_join","jobId":"job-1","userId":"carol"}
    {"type":"presence_leave","jobId":"job-1","userId":"alice"}
"""

from __future__ import annotations

from typing import Any

import attrs

from .chat import is_conversation_id
from .codes import ErrorCode, ProtocolError
from .messages import encode, require_id


@attrs.frozen
class PresenceRequest:
    job_id: str | None = None
    conversation_id: str | None = None


def decode_presence(message: dict[str, Any]) -> PresenceRequest:
    has_job, has_conversation = "jobId" in message, "conversationId" in message
    if has_job == has_conversation:
        raise ProtocolError(ErrorCode.BAD_REQUEST, 'presence needs exactly one of "jobId" or "conversationId"')
    if has_job:
        return PresenceRequest(job_id=require_id(message, "jobId"))
    conversation = message["conversationId"]
    if not isinstance(conversation, str) or not conversation or len(conversation) > 300 \
            or not is_conversation_id(conversation):
        raise ProtocolError(ErrorCode.BAD_REQUEST, '"conversationId" must be a conversation id')
    return PresenceRequest(conversation_id=conversation)


def presence_message(field: str, scope_id: str, count: int, users: list[str]) -> bytes:
    """``field``: ``jobId`` or ``conversationId``."""
    return encode({"type": "presence", field: scope_id, "count": count, "users": users})


def presence_change(joined: bool, job_id: str, user_id: str) -> bytes:
    return encode({"type": "presence_join" if joined else "presence_leave", "jobId": job_id, "userId": user_id})
