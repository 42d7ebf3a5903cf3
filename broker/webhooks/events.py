"""Webhook events as the receiver sees them (pure): the body, the key that orders
them, and the event id.

A body is ``{"type": "chat.message", "timestamp": "...Z", "data": {...}}`` (the
Standard Webhooks shape). ``data`` per type:

| type | key | data |
|---|---|---|
| ``user.online`` / ``user.offline`` | ``user:<id>`` | ``{"userId"}``; in a cluster also ``"seq"`` |
| ``chat.message`` | ``conversation:<id>`` | the message exactly as recipients receive it |
| ``chat.read`` | ``conversation:<id>`` | ``{"conversationId", "userId", "msgId"}`` |
| ``job.occupied`` / ``job.vacated`` | ``job:<id>`` | ``{"jobId"}`` |

Events of one key are delivered to an endpoint one at a time, in the order they were
recorded. In a cluster a user's transitions carry ``seq`` (the user's transition number:
consecutive, increasing, online and offline alternating) and a webhook-id made from
(user, seq), the same whichever node records it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime
from typing import Any

USER_ONLINE = "user.online"
USER_OFFLINE = "user.offline"
CHAT_MESSAGE = "chat.message"
CHAT_READ = "chat.read"
JOB_OCCUPIED = "job.occupied"
JOB_VACATED = "job.vacated"
EVENT_TYPES = (USER_ONLINE, USER_OFFLINE, CHAT_MESSAGE, CHAT_READ, JOB_OCCUPIED, JOB_VACATED)


def user_key(user_id: str) -> str:
    return f"user:{user_id}"


def conversation_key(conversation_id: str) -> str:
    return f"conversation:{conversation_id}"


def job_key(job_id: str) -> str:
    return f"job:{job_id}"


def new_webhook_id() -> str:
    """A fresh event id (``msg_`` and 24 random hex digits); kept with the event, so
    every retry of it carries the same one."""
    return "msg_" + secrets.token_hex(12)


def transition_webhook_id(user_id: str, seq: int) -> str:
    """The id of a user's transition ``seq`` (cluster): the same on every node that
    records it, so a redo is the same event."""
    return "msg_" + hashlib.sha256(f"{user_id}\n{seq}".encode()).hexdigest()[:24]


def iso_now(now: float) -> str:
    """``now`` (epoch seconds) as ISO 8601 UTC with milliseconds and ``Z``."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(now * 1000) % 1000:03d}Z"


def event_body(event_type: str, data: bytes, now: float) -> bytes:
    """The body for ``data`` (compact JSON of an object: a chat message's stored bytes
    go in unchanged, never decoded and encoded again)."""
    head = json.dumps({"type": event_type, "timestamp": iso_now(now)}, separators=(",", ":")).encode()
    return head[:-1] + b',"data":' + data + b"}"


def json_data(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
