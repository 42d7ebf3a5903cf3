"""The server-to-server HTTP API, behind the API key.

| method | path | what |
|---|---|---|
| POST | ``/api/publish`` | publish job events (one object or an array) |
| POST | ``/api/groups`` | create a group: ``{"groupId", "name"?, "members": [...]}`` |
| GET | ``/api/groups/{id}`` | the group and its members |
| DELETE | ``/api/groups/{id}`` | delete the group and its messages |
| PUT | ``/api/groups/{id}/members`` | add members: ``{"members": [...]}`` |
| DELETE | ``/api/groups/{id}/members/{user}`` | remove a member |
| GET | ``/api/users/{user}/groups`` | the groups a user is in |

Every answer is JSON; errors are ``{"type":"error","code":...,"message":...}`` with
the matching HTTP status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import attrs

from actors import Reply

from ..chat.conversations import GroupError
from ..hub.rooms import RoomsFull, RoomUnavailable
from ..protocols import ErrorCode, JobEvent, ProtocolError, decode_json_object, decode_publish, error_message
from ..protocols.text import USER_ID_RULE, is_user_id
from ..store import StoreError
from ..transport.http1 import HttpError

if TYPE_CHECKING:
    from ..auth.tokens import ApiKeys
    from ..chat.conversations import Chat
    from ..jobs.room import JobRooms

log = logging.getLogger("broker.api")

_STATUS_CODES = {400: ErrorCode.BAD_REQUEST, 401: ErrorCode.UNAUTHORIZED, 403: ErrorCode.FORBIDDEN,
                 404: ErrorCode.NOT_FOUND, 409: ErrorCode.BAD_REQUEST, 413: ErrorCode.MESSAGE_TOO_BIG,
                 503: ErrorCode.UNAVAILABLE}


@attrs.frozen
class ApiResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = attrs.field(factory=list)


def _json(status: int, value: Any) -> ApiResponse:
    return ApiResponse(status, json.dumps(value, ensure_ascii=False).encode("utf-8"))


def _error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> ApiResponse:
    code = _STATUS_CODES.get(status, ErrorCode.BAD_REQUEST if status < 500 else ErrorCode.INTERNAL_ERROR)
    return ApiResponse(status, error_message(code, message), headers=headers or [])


ReadBody = Callable[[], Awaitable[bytes]]


@attrs.frozen
class ApiDeps:
    """What the API uses, built once by the broker (broker/app.py)."""

    api_keys: ApiKeys
    job_rooms: JobRooms
    chat: Chat  # its groups
    draining: Callable[[], bool]  # True once shutdown began: publishes are refused with 503
    publish_path: str
    api_prefix: str
    extra_event_types: tuple[str, ...]
    outgoing_frame_limit: int


class PublishAnswer:
    """The answer to a publish whose events are queued in their rooms: awaited (called)
    once their commits come back. ``ready`` says it will not wait, so a writer can put
    the answers already there into one write."""

    __slots__ = ("_path", "_events", "_replies", "_response")

    def __init__(self, path: str, events: list[JobEvent], replies: list[Reply[int]],
                 response: ApiResponse | None = None) -> None:
        self._path = path
        self._events = events
        self._replies = replies
        self._response = response  # known already: refused before anything was queued

    @property
    def ready(self) -> bool:
        return self._response is not None or all(reply.done for reply in self._replies)

    async def __call__(self) -> ApiResponse:
        if self._response is None:
            try:
                seqs = [await reply.wait() for reply in self._replies]
            except (StoreError, RoomUnavailable) as exc:
                self._response = failure_response("POST", self._path, exc)
            else:
                self._response = _published(self._events, seqs)
        return self._response


class Api:
    def __init__(self, deps: ApiDeps) -> None:
        self.deps = deps
        self.publish_path = deps.publish_path
        self.prefix = deps.api_prefix.rstrip("/")

    def owns(self, path: str) -> bool:
        return path == self.publish_path or path.startswith(self.prefix + "/")

    async def handle(self, method: str, path: str, headers: list[tuple[bytes, bytes]], read_body: ReadBody) -> ApiResponse:
        api_keys = self.deps.api_keys
        if not api_keys.configured:
            return _error(403, "the API is disabled: configure [api] keys or BROKER_API_KEY")
        if not api_keys.check(headers):
            return _error(401, "missing or wrong API key (Authorization: Bearer <key> or X-API-Key)",
                          [("WWW-Authenticate", 'Bearer realm="broker"')])
        try:
            return await self._route(method, path, read_body)
        except (HttpError, ProtocolError, GroupError, StoreError, RoomUnavailable) as exc:
            return failure_response(method, path, exc)

    def authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """The API is on and ``headers`` carry one of its keys (else :meth:`handle`
        gives the 403 or 401)."""
        return self.deps.api_keys.configured and self.deps.api_keys.check(headers)

    async def start_publish(self, body: bytes) -> PublishAnswer:
        """An ``authorized`` ``POST`` to the publish path, in two steps for a connection
        that pipelines its requests: the events are checked and queued in their rooms
        now (so one connection's publishes are sequenced in request order), and the
        returned :class:`PublishAnswer` waits for their commit and gives the answer (the
        answers :meth:`handle` gives)."""
        try:
            if self.deps.draining():
                raise HttpError(503, "server is draining")
            events = decode_publish(body, self.deps.extra_event_types, self.deps.outgoing_frame_limit)
            replies = await self.deps.job_rooms.submit_many(events)
        except (HttpError, ProtocolError, StoreError, RoomUnavailable) as exc:
            return PublishAnswer(self.publish_path, [], [], failure_response("POST", self.publish_path, exc))
        return PublishAnswer(self.publish_path, events, replies)

    async def _route(self, method: str, path: str, read_body: ReadBody) -> ApiResponse:
        if path == self.publish_path:
            require_method(method, "POST")
            return await self._publish(await read_body())
        parts = [unquote(p) for p in path[len(self.prefix) + 1:].split("/")]
        chat = self.deps.chat
        if parts == ["groups"]:
            require_method(method, "POST")
            body = decode_json_object(await read_body(), "body")
            group_id = body.get("groupId")
            members = _members(body)
            name = body.get("name", "")
            if not isinstance(group_id, str) or not isinstance(name, str):
                raise HttpError(400, '"groupId" (and "name", if given) must be strings')
            members = await chat.create_group(group_id, members, name)
            return _json(201, {"groupId": group_id, "name": name or group_id, "members": members})
        if len(parts) == 2 and parts[0] == "groups":
            require_method(method, "GET", "DELETE")
            if method == "GET":
                return _json(200, await chat.group(parts[1]))
            await chat.delete_group(parts[1])
            return _json(200, {"groupId": parts[1], "deleted": True})
        if len(parts) == 3 and parts[0] == "groups" and parts[2] == "members":
            require_method(method, "PUT")
            members = await chat.add_members(parts[1], _members(decode_json_object(await read_body(), "body")))
            return _json(200, {"groupId": parts[1], "members": members})
        if len(parts) == 4 and parts[0] == "groups" and parts[2] == "members":
            require_method(method, "DELETE")
            members = await chat.remove_members(parts[1], [parts[3]])
            return _json(200, {"groupId": parts[1], "members": members})
        if len(parts) == 3 and parts[0] == "users" and parts[2] == "groups":
            require_method(method, "GET")
            if not is_user_id(parts[1]):
                raise HttpError(400, f"the user must be {USER_ID_RULE}")
            return _json(200, {"userId": parts[1], "groups": await chat.groups_of(parts[1])})
        raise HttpError(404, f"no API route for {path}")

    async def _publish(self, body: bytes) -> ApiResponse:
        deps = self.deps
        if deps.draining():
            raise HttpError(503, "server is draining")
        events = decode_publish(body, deps.extra_event_types, deps.outgoing_frame_limit)
        return _published(events, await deps.job_rooms.publish_many(events))


def _published(events: list[JobEvent], seqs: list[int]) -> ApiResponse:
    results = [{"jobId": e.job_id, "type": e.type, "seq": s} for e, s in zip(events, seqs, strict=True)]
    return _json(200, {"status": "ok", **results[0]} if len(results) == 1 else {"status": "ok", "events": results})


def failure_response(method: str, path: str, exc: Exception) -> ApiResponse:
    """The answer to a request that failed with ``exc``."""
    if isinstance(exc, HttpError):
        return _error(exc.status, exc.body, exc.headers)
    if isinstance(exc, ProtocolError):
        return _error(413 if exc.code is ErrorCode.MESSAGE_TOO_BIG else 400, exc.message)
    if isinstance(exc, GroupError):
        return _error(exc.status, str(exc))
    if isinstance(exc, RoomsFull):  # no room for this job may start now (an array's earlier events went through)
        return _error(503, f"publish refused: {exc}", [("Retry-After", "1")])
    log.error("%s %s failed: %s", method, path, exc)  # StoreError, RoomUnavailable
    return _error(503, "not stored, retry")


def require_method(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise HttpError(405, f"method {method} not allowed here (use {' or '.join(allowed)})",
                        [("Allow", ", ".join(allowed))])


def _members(body: dict[str, Any]) -> list[str]:
    members = body.get("members", [])
    if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
        raise HttpError(400, '"members" must be a list of user ids')
    if len(members) > 10_000:
        raise HttpError(400, "at most 10000 members at once")
    return members
