"""Client messages in, server messages out: the JSON layer of docs/PROTOCOL.md.

``decode_typed_message`` turns a system or job message into a typed command or raises
:class:`ProtocolError` with the code and a message fit to send back; the encoders
build the exact server frames of the contract. Pure: no trio, no sockets.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import attrs

from .codes import ErrorCode, ProtocolError
from .text import loads_json

# Whole-string patterns: always used with fullmatch (``$`` would let a trailing "\n" in).
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@\-]{0,127}")
IDEMPOTENCY_KEY_PATTERN = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
MAX_SEQ = 2**63 - 1

# ---------------------------------------------------------------------------
# time


_SECOND: tuple[int, str] = (-1, "")  # the whole second formatted last, and its text


def format_timestamp(epoch_seconds: float) -> str:
    """ISO 8601 UTC with milliseconds and Z: ``2025-12-22T08:46:27.500Z``. The text of
    the whole second is kept from one call to the next (every publish stamps its events)."""
    global _SECOND
    seconds, millis = divmod(int(epoch_seconds * 1000), 1000)
    second = _SECOND
    if second[0] != seconds:
        second = _SECOND = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{second[1]}.{millis:03d}Z"


def timestamp_now() -> str:
    return format_timestamp(time.time())


# ---------------------------------------------------------------------------
# client -> server commands


@attrs.frozen
class Auth:
    token: str


@attrs.frozen
class Ping:
    pass


@attrs.frozen
class JoinJob:
    job_id: str
    last_seq: int | None = None
    last_epoch: str | None = None  # cluster: the epoch lastSeq belongs to (from joined or an event)
    presence: bool = False  # also stream presence_join / presence_leave of this job


@attrs.frozen
class LeaveJob:
    job_id: str


ClientCommand = Any  # one of the command classes here or in chat.py


def decode_json_object(text: str | bytes, what: str = "message") -> dict[str, Any]:
    """Parse ``text`` as one JSON object or raise BAD_REQUEST saying why."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{what} is not valid UTF-8") from None
    value = loads_json(text, what)
    if not isinstance(value, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{what} must be a JSON object")
    return value


def decode_typed_message(message: dict[str, Any]) -> ClientCommand:
    """A system or job message (one with a ``type``) as a command."""
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, 'message needs a string "type" (or "chatType" for chat)')
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"unknown message type {_quote(kind)}")
    return decoder(message)


def _decode_auth(message: dict[str, Any]) -> Auth:
    token = message.get("token")
    if not isinstance(token, str) or not token:
        raise ProtocolError(ErrorCode.BAD_REQUEST, 'auth needs a non-empty string "token"')
    return Auth(token)


def _decode_join(message: dict[str, Any]) -> JoinJob:
    job_id = require_id(message, "jobId")
    last_seq = message.get("lastSeq")
    if last_seq is not None and (
        not isinstance(last_seq, int) or isinstance(last_seq, bool) or not 0 <= last_seq <= MAX_SEQ
    ):
        raise ProtocolError(ErrorCode.BAD_REQUEST, '"lastSeq" must be a non-negative integer')
    last_epoch = message.get("lastEpoch")
    if last_epoch is not None and (not isinstance(last_epoch, str) or not 0 < len(last_epoch) <= 64):
        raise ProtocolError(ErrorCode.BAD_REQUEST, '"lastEpoch" must be the string a joined message gave')
    presence = message.get("presence", False)
    if not isinstance(presence, bool):
        raise ProtocolError(ErrorCode.BAD_REQUEST, '"presence" must be true or false')
    return JoinJob(job_id, last_seq, last_epoch, presence)


def _decode_leave(message: dict[str, Any]) -> LeaveJob:
    return LeaveJob(require_id(message, "jobId"))


_DECODERS = {
    "auth": _decode_auth,
    "ping": lambda message: Ping(),
    "join_job": _decode_join,
    "leave_job": _decode_leave,
}


def require_id(message: dict[str, Any], field: str) -> str:
    value = message.get(field)
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f'"{field}" must be 1-128 characters of letters, digits and ._:@- (starting with a letter or digit)',
        )
    return value


def _quote(value: str, limit: int = 40) -> str:
    return json.dumps(value[:limit] + ("..." if len(value) > limit else ""), ensure_ascii=True)



# ---------------------------------------------------------------------------
# job events (server-to-server publish and the events sent to rooms)

JOB_EVENT_TYPES = ("job_status", "stage_completed", "job_error")
_REQUIRED_DATA = {"job_status": "status", "stage_completed": "stage", "job_error": "error"}
EVENT_TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")


@attrs.frozen
class JobEvent:
    """A job event as published, before the broker assigns its ``seq``."""

    job_id: str
    type: str
    data: dict[str, Any]
    # ``data`` as sent (jobId first) without the timestamp the broker adds: encoded once
    # when the event is checked, reused when it is sequenced
    data_json: bytes | None = attrs.field(default=None, eq=False, repr=False)
    # the publisher's "idempotencyKey": a retry with it is answered with the first seq, not stored again
    idempotency_key: str | None = None


def decode_publish(body: bytes, extra_event_types: tuple[str, ...] = (),
                   max_event_bytes: int | None = None) -> list[JobEvent]:
    """A publish request body: one event object, or a JSON array of them (published in
    order). Raises ProtocolError naming the first bad event (MESSAGE_TOO_BIG for one
    that would be sent as more than ``max_event_bytes``)."""
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "body is not valid UTF-8") from None
    else:
        text = body
    value = loads_json(text, "body")
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "body holds no event")
    events = []
    for index, item in enumerate(items):
        where = f"event {index}: " if isinstance(value, list) else ""
        try:
            events.append(validate_job_event(item, extra_event_types, max_event_bytes))
        except ProtocolError as exc:
            raise ProtocolError(exc.code, where + exc.message) from None
    return events


def validate_job_event(item: Any, extra_event_types: tuple[str, ...] = (),
                       max_event_bytes: int | None = None) -> JobEvent:
    if not isinstance(item, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "an event must be a JSON object")
    job_id = require_id(item, "jobId")
    kind = item.get("type")
    allowed = JOB_EVENT_TYPES + tuple(extra_event_types)
    if not isinstance(kind, str) or kind not in allowed:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f'"type" must be one of {", ".join(allowed)} '
                                   '(the broker accepts more when they are listed in [jobs] extra_event_types)'
        )
    data = item.get("data", {})
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, '"data" must be a JSON object')
    required = _REQUIRED_DATA.get(kind)
    if required is not None and not isinstance(data.get(required), str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f'{kind} needs a string "data.{required}"')
    event = JobEvent(job_id, kind, data, _data_json(job_id, data), _idempotency_key(item))
    if max_event_bytes is not None:
        check_event_size(event, max_event_bytes)
    return event


def _idempotency_key(item: dict[str, Any]) -> str | None:
    if "idempotencyKey" not in item:
        return None
    key = item["idempotencyKey"]
    if not isinstance(key, str) or not IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
        raise ProtocolError(ErrorCode.BAD_REQUEST, '"idempotencyKey" must be 1-64 characters of letters, digits and ._:-')
    return key


def check_event_size(event: JobEvent, max_event_bytes: int) -> None:
    """MESSAGE_TOO_BIG if ``event`` could be sent as more than ``max_event_bytes``: it is
    encoded with the longest seq (the timestamp has a fixed length), an exact bound."""
    size = len(encode_job_event(event, MAX_SEQ, 0.0))
    if size > max_event_bytes:
        raise ProtocolError(
            ErrorCode.MESSAGE_TOO_BIG, f"event is {size} bytes as sent to clients; the limit is {max_event_bytes}"
        )


def encode_job_event(event: JobEvent, seq: int, now: float) -> bytes:
    """The frame payload sent to every member of the job's room, exactly as docs/PROTOCOL.md
    section 3 shows: ``data`` gets ``jobId`` first and a ``timestamp`` unless the
    publisher gave one."""
    return job_event_parts(event, now).assemble(seq, None)


@attrs.frozen
class JobEventParts:
    """A job event encoded up to its ``seq`` (and cluster ``epoch``), which whoever
    sequences it fills in: ``head + seq [+ ,"epoch":"E"] + tail``. Both parts are
    plain bytes, so a Redis script can assemble them the same way."""

    type: str
    head: bytes  # {"type":"...","seq":
    tail: bytes  # ,"data":{...}}
    idempotency_key: str | None = None  # not sent: whoever sequences the event remembers it

    def assemble(self, seq: int, epoch: str | None) -> bytes:
        middle = b"%d" % seq if epoch is None else b'%d,"epoch":"%s"' % (seq, epoch.encode("ascii"))
        return self.head + middle + self.tail


def _data_json(job_id: str, data: dict[str, Any]) -> bytes:
    """``data`` with ``jobId`` first, encoded (no timestamp added)."""
    sent: dict[str, Any] = {"jobId": job_id}
    for key, value in data.items():
        if key != "jobId":
            sent[key] = value
    return encode(sent)


def job_event_parts(event: JobEvent, now: float) -> JobEventParts:
    head = b'{"type":' + encode(event.type) + b',"seq":'
    data = event.data
    stamp = data.get("timestamp")
    if isinstance(stamp, str) or "timestamp" not in data:
        body = event.data_json if event.data_json is not None else _data_json(event.job_id, data)
        if stamp is None:  # the broker's timestamp goes last, as a key added to the object would
            body = body[:-1] + b',"timestamp":"' + format_timestamp(now).encode("ascii") + b'"}'
        return JobEventParts(event.type, head, b',"data":' + body + b"}", event.idempotency_key)
    sent: dict[str, Any] = {"jobId": event.job_id}  # a timestamp that is not a string is replaced in place
    for key, value in data.items():
        if key != "jobId":
            sent[key] = value
    sent["timestamp"] = format_timestamp(now)
    return JobEventParts(event.type, head, b',"data":' + encode(sent) + b"}", event.idempotency_key)


# ---------------------------------------------------------------------------
# server -> client messages


def encode(message: object) -> bytes:
    """Compact UTF-8 JSON of a JSON value (a message, or a string within one), non-ASCII
    kept as is (chat content stays readable)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def error_message(code: ErrorCode | str, message: str, **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "type": "error",
        "code": code.value if isinstance(code, ErrorCode) else code,
        "message": message,
    }
    body.update(extra)
    body["timestamp"] = timestamp_now()
    return encode(body)


def pong_message() -> bytes:
    return encode({"type": "pong", "timestamp": timestamp_now()})


def connection_established(client_id: str, user_id: str, heartbeat_interval_ms: int) -> bytes:
    return encode(
        {
            "type": "connection_established",
            "clientId": client_id,
            "userId": user_id,
            "timestamp": timestamp_now(),
            "heartbeatInterval": heartbeat_interval_ms,
        }
    )


def joined_message(job_id: str, seq: int, epoch: str | None = None) -> bytes:
    """Extension: confirms a join, with the job's current seq (0 if none yet) and, in a
    cluster, the epoch of the coordination state those seqs belong to."""
    if epoch is None:
        return encode({"type": "joined", "jobId": job_id, "seq": seq})
    return encode({"type": "joined", "jobId": job_id, "seq": seq, "epoch": epoch})


def left_message(job_id: str) -> bytes:
    """Extension: confirms a leave."""
    return encode({"type": "left", "jobId": job_id})
