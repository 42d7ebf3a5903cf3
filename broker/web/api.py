"""The server API, behind the API key: one route table (:mod:`.routes`) routes every
request and writes the OpenAPI document served at ``{api_prefix}/openapi.json``
(no key needed for the document), so the two cannot drift.

The routes: publish (``POST /api/publish``, here), job rooms (:mod:`.api_jobs`),
users, disconnect and ban (:mod:`.api_users`), chat and groups (:mod:`.api_chat`),
and the nodes' stats (``GET /api/stats``, here); docs/PROTOCOL.md section 8 lists
them all. Every answer is JSON; errors are ``{"type":"error","code":...,"message":...}``
with the matching HTTP status (400 bad input, 401 no or wrong key, 403 the API is
off, 404, 405 with ``Allow``, 413, 503 retry).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from actors import Reply

from ..chat.groups import GroupError
from ..cluster import BackplaneUnavailable
from ..hub.rooms import RoomsFull, RoomUnavailable
from ..protocols import ErrorCode, JobEvent, ProtocolError, decode_publish
from ..store import StoreError
from ..transport.http1 import HttpError
from .api_chat import ChatRoutes
from .api_jobs import JobRoutes
from .api_users import UserRoutes
from .openapi import openapi_document
from .routes import Answer, ApiRequest, ApiResponse, ReadBody, Route, RouteTable, error_response, json_response
from .schema import ID, IDEMPOTENCY_KEY

if TYPE_CHECKING:
    from ..auth.tokens import ApiKeys
    from ..chat.groups import Groups
    from ..chat.service import Chat
    from ..cluster import JobLog
    from ..cluster.control import Control
    from ..jobs.job_rooms import JobRooms

log = logging.getLogger("broker.api")

__all__ = ["Api", "ApiDeps", "ApiResponse", "PublishAnswer", "failure_response", "require_method"]

API_VERSION = "1.0.0"

_error = error_response
_json = json_response


@attrs.frozen
class ApiDeps:
    """What the API uses, built once by the broker (broker/app.py)."""

    api_keys: ApiKeys
    job_rooms: JobRooms
    chat: Chat  # messages sent by the backend, conversations' history
    groups: Groups
    draining: Callable[[], bool]  # True once shutdown began: publishes are refused with 503
    publish_path: str
    api_prefix: str
    extra_event_types: tuple[str, ...]
    outgoing_frame_limit: int
    job_log: JobLog  # a job's latest status and history pages
    control: Control  # users on every node, disconnect and ban, every node's stats
    history_size: int  # [jobs] history_size
    max_content_length: int  # [chat] max_content_length
    history_max_limit: int  # [chat] history_max_limit
    clustered: bool


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
            except (StoreError, BackplaneUnavailable, RoomUnavailable) as exc:
                self._response = failure_response("POST", self._path, exc)
            else:
                self._response = _published(self._events, seqs)
        return self._response


class Api:
    def __init__(self, deps: ApiDeps, extra_routes: list[Route] | None = None) -> None:
        """``extra_routes``: routes of other parts (webhooks), in the same table and document."""
        self.deps = deps
        self.publish_path = deps.publish_path
        self.prefix = deps.api_prefix.rstrip("/")
        self.openapi_path = f"{self.prefix}/openapi.json"
        prefix = self.prefix
        self.table = RouteTable([
            self._publish_route(),
            *JobRoutes(prefix, deps.job_rooms, deps.job_log, deps.history_size).routes(),
            *UserRoutes(prefix, deps.control).routes(),
            *ChatRoutes(prefix, deps.chat, deps.groups, deps.max_content_length, deps.history_max_limit,
                        deps.outgoing_frame_limit).routes(),
            Route("GET", f"{prefix}/stats", self._stats, "getStats", "This node's and every live node's stats", {
                200: Answer("the stats", STATS)}, tag="stats"),
            *(extra_routes or []),
            Route("GET", self.openapi_path, self._openapi, "getOpenApi", "This document (no API key needed)", {
                200: Answer("the OpenAPI 3.1 document", {"type": "object"})}, public=True, tag="meta"),
        ])
        self._document: bytes | None = None

    def owns(self, path: str) -> bool:
        return path == self.publish_path or path.startswith(self.prefix + "/")

    async def handle(self, method: str, path: str, headers: list[tuple[bytes, bytes]], read_body: ReadBody,
                     query: str = "") -> ApiResponse:
        """Answer one request; never raises for bad input or a store that fails."""
        try:
            route, raw_params = self.table.find(method, path)
            if not route.public:
                api_keys = self.deps.api_keys
                if not api_keys.configured:
                    return _error(403, "the API is disabled: configure [api] keys or BROKER_API_KEY")
                if not api_keys.check(headers):
                    return _error(401, "missing or wrong API key (Authorization: Bearer <key> or X-API-Key)",
                                  [("WWW-Authenticate", 'Bearer realm="broker"')])
            request = await self.table.resolve(route, raw_params, method, path, query, read_body)
            return await route.handler(request)
        except HttpError as exc:
            if exc.status in (404, 405) and not self.authorized(headers):
                # nothing about the routes is told before the key: as before the table
                return self._unauthorized()
            return failure_response(method, path, exc)
        except (ProtocolError, GroupError, StoreError, BackplaneUnavailable, RoomUnavailable) as exc:
            return failure_response(method, path, exc)

    def _unauthorized(self) -> ApiResponse:
        if not self.deps.api_keys.configured:
            return _error(403, "the API is disabled: configure [api] keys or BROKER_API_KEY")
        return _error(401, "missing or wrong API key (Authorization: Bearer <key> or X-API-Key)",
                      [("WWW-Authenticate", 'Bearer realm="broker"')])

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
        except (HttpError, ProtocolError, StoreError, BackplaneUnavailable, RoomUnavailable) as exc:
            return PublishAnswer(self.publish_path, [], [], failure_response("POST", self.publish_path, exc))
        return PublishAnswer(self.publish_path, events, replies)

    def _publish_route(self) -> Route:
        return Route(
            "POST", self.publish_path, self._publish, "publish", "Publish job events (one object or an array)", {
                200: Answer("committed: the seq of each event", PUBLISHED),
                413: Answer("the body, or an event as it would be sent, is too large"),
                503: Answer("not stored (or the room limit is reached, or draining): retry")},
            body=publish_schema(self.deps.extra_event_types), parse_body=False, tag="jobs",
            description="`type` is job_status (needs data.status), stage_completed (needs data.stage), "
                        "job_error (needs data.error) or one of [jobs] extra_event_types.")

    async def _publish(self, request: ApiRequest) -> ApiResponse:
        deps = self.deps
        if deps.draining():
            raise HttpError(503, "server is draining")
        events = decode_publish(request.raw_body, deps.extra_event_types, deps.outgoing_frame_limit)
        return _published(events, await deps.job_rooms.publish_many(events))

    async def _stats(self, request: ApiRequest) -> ApiResponse:
        nodes = await self.deps.control.node_stats()
        return _json(200, {"cluster": self.deps.clustered, "node": nodes[0] if nodes else None, "nodes": nodes})

    async def _openapi(self, request: ApiRequest) -> ApiResponse:
        if self._document is None:
            self._document = json.dumps(openapi_document(self.table, API_VERSION), ensure_ascii=False).encode()
        return ApiResponse(200, self._document)


def _published(events: list[JobEvent], seqs: list[int]) -> ApiResponse:
    results = [{"jobId": e.job_id, "type": e.type, "seq": s} for e, s in zip(events, seqs, strict=True)]
    return _json(200, {"status": "ok", **results[0]} if len(results) == 1 else {"status": "ok", "events": results})


_PROTOCOL_STATUS = {ErrorCode.MESSAGE_TOO_BIG: 413, ErrorCode.FORBIDDEN: 403, ErrorCode.NOT_FOUND: 404,
                    ErrorCode.UNAVAILABLE: 503}


def failure_response(method: str, path: str, exc: Exception) -> ApiResponse:
    """The answer to a request that failed with ``exc``."""
    if isinstance(exc, HttpError):
        return _error(exc.status, exc.body, exc.headers)
    if isinstance(exc, ProtocolError):
        return _error(_PROTOCOL_STATUS.get(exc.code, 400), exc.message, code=exc.code)
    if isinstance(exc, GroupError):
        return _error(exc.status, str(exc))
    if isinstance(exc, RoomsFull):  # no room for this job may start now (an array's earlier events went through)
        return _error(503, f"publish refused: {exc}", [("Retry-After", "1")])
    log.error("%s %s failed: %s", method, path, exc)  # StoreError, BackplaneUnavailable, RoomUnavailable
    return _error(503, "not stored, retry" if method == "POST" else "unavailable, retry")


def require_method(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise HttpError(405, f"method {method} not allowed here (use {' or '.join(allowed)})",
                        [("Allow", ", ".join(allowed))])


_NEEDS = {"job_status": "status", "stage_completed": "stage", "job_error": "error"}  # a string in data


def publish_schema(extra_event_types: tuple[str, ...]) -> dict[str, Any]:
    """One event or a non-empty array of them; each type with the data field it needs."""
    kinds: list[dict[str, Any]] = [
        {"type": "object", "required": ["jobId", "type", "data"],
         "properties": {"jobId": ID, "type": {"const": kind}, "idempotencyKey": IDEMPOTENCY_KEY,
                        "data": {"type": "object", "required": [field], "properties": {field: {"type": "string"}}}}}
        for kind, field in _NEEDS.items()
    ]
    if extra_event_types:
        kinds.append({"type": "object", "required": ["jobId", "type"],
                      "properties": {"jobId": ID, "type": {"enum": list(extra_event_types)},
                                     "idempotencyKey": IDEMPOTENCY_KEY, "data": {"type": "object"}}})
    event = {"oneOf": kinds}
    return {"oneOf": [event, {"type": "array", "items": event, "minItems": 1}]}


_RESULT = {"type": "object", "required": ["jobId", "type", "seq"],
           "properties": {"jobId": {"type": "string"}, "type": {"type": "string"}, "seq": {"type": "integer"}}}
PUBLISHED: dict[str, Any] = {
    "type": "object", "required": ["status"],
    "properties": {"status": {"const": "ok"}, "jobId": {"type": "string"}, "type": {"type": "string"},
                   "seq": {"type": "integer"}, "events": {"type": "array", "items": _RESULT}},
}
_RATE = {"type": "number", "minimum": 0}
_COUNT = {"type": ["integer", "null"], "minimum": 0}
NODE_STATS: dict[str, Any] = {
    "type": "object",
    "required": ["node", "connections", "users", "jobRooms", "conversations", "deliveriesPerSecond",
                 "publishesPerSecond", "webhooks"],
    "properties": {
        "node": {"type": "string"}, "connections": {"type": "integer"}, "users": {"type": "integer"},
        "jobRooms": {"type": "integer"}, "conversations": {"type": "integer"},
        "deliveriesPerSecond": _RATE, "publishesPerSecond": _RATE, "chatMessagesPerSecond": _RATE,
        "webhooks": {"type": "object", "properties": {"queueDepth": _COUNT, "failures": _COUNT,
                                                      "deadLetters": _COUNT},
                     "description": "null while no webhook sender reports"},
        "uptimeSeconds": {"type": "number"}, "timestamp": {"type": "integer"},
    },
}
STATS: dict[str, Any] = {
    "type": "object", "required": ["cluster", "node", "nodes"],
    "properties": {"cluster": {"type": "boolean"}, "node": {"oneOf": [NODE_STATS, {"type": "null"}]},
                   "nodes": {"type": "array", "items": NODE_STATS, "description": "every live node, this one first"}},
}
