"""Server API routes of job rooms: a job's latest status, its history pages, and who
watches it (docs/PROTOCOL.md section 8.2)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..protocols import ErrorCode
from ..protocols.messages import encode
from .routes import Answer, ApiRequest, ApiResponse, Route, error_response, json_response
from .schema import ID, SEQ, obj

if TYPE_CHECKING:
    from ..cluster import JobHistory, JobLog
    from ..jobs.job_rooms import JobRooms

EVENTS_LIMIT_MAX = 1000

EVENT = {"type": "object", "required": ["type", "seq", "data"],
         "properties": {"type": {"type": "string"}, "seq": {"type": "integer"}, "epoch": {"type": "string"},
                        "data": {"type": "object"}}}
JOB = obj({
    "jobId": {"type": "string"},
    "seq": {"type": "integer", "description": "the job's last seq"},
    "epoch": {"type": "string", "description": "cluster only: the epoch the seqs belong to"},
    "status": {"type": ["string", "null"], "description": "data.status of the latest job_status"},
    "latestStatus": {"oneOf": [EVENT, {"type": "null"}], "description": "the latest job_status event, as sent"},
}, ("jobId", "seq", "status", "latestStatus"), closed=False)
EVENTS_PAGE = obj({
    "jobId": {"type": "string"}, "seq": {"type": "integer"}, "epoch": {"type": "string"},
    "hasMore": {"type": "boolean"}, "events": {"type": "array", "items": EVENT},
}, ("jobId", "seq", "hasMore", "events"), closed=False)
PRESENCE = obj({
    "type": {"const": "presence"}, "jobId": {"type": "string"}, "count": {"type": "integer", "minimum": 0},
    "users": {"type": "array", "items": {"type": "string"}},
}, ("type", "jobId", "count", "users"), closed=False)
GAP = {
    "type": "object", "required": ["type", "code", "message", "jobId", "lastSeq", "firstSeq", "seq"],
    "properties": {"type": {"const": "error"}, "code": {"const": "HISTORY_GAP"}, "message": {"type": "string"},
                   "jobId": {"type": "string"}, "lastSeq": {"type": "integer"}, "firstSeq": {"type": "integer"},
                   "seq": {"type": "integer"}, "epoch": {"type": "string"}, "timestamp": {"type": "string"}},
}
_UNAVAILABLE = Answer("the job log could not be read (in a cluster: Redis unreachable): retry")


class JobRoutes:
    """``/jobs/...`` under the API prefix."""

    def __init__(self, prefix: str, job_rooms: JobRooms, job_log: JobLog, history_size: int) -> None:
        self.prefix = prefix
        self.job_rooms = job_rooms
        self.job_log = job_log
        self.history_size = history_size

    def routes(self) -> list[Route]:
        job = {"jobId": ID}
        return [
            Route("GET", f"{self.prefix}/jobs/{{jobId}}", self.get_job, "getJob",
                  "A job's last seq and latest status", {
                      200: Answer("the job", JOB), 404: Answer("no event was ever published for this job"),
                      503: _UNAVAILABLE}, params=job, tag="jobs"),
            Route("GET", f"{self.prefix}/jobs/{{jobId}}/events", self.get_events, "getJobEvents",
                  "A page of a job's history after a seq, oldest first", {
                      200: Answer("the events after `after` still in history, at most `limit`", EVENTS_PAGE),
                      404: Answer("no event was ever published for this job"),
                      410: Answer("HISTORY_GAP: history no longer reaches back to `after` (or `after` is ahead "
                                  "of the job, or `epoch` is not the current one); `firstSeq` is the oldest kept",
                                  GAP),
                      503: _UNAVAILABLE},
                  params=job, tag="jobs",
                  query={"after": {**SEQ, "default": 0}, "limit": {"type": "integer", "minimum": 1,
                                                                   "maximum": EVENTS_LIMIT_MAX, "default": 100},
                         "epoch": {"type": "string", "maxLength": 64, "description": "cluster: the epoch of `after`"}}),
            Route("GET", f"{self.prefix}/jobs/{{jobId}}/presence", self.get_presence, "getJobPresence",
                  "Who is in a job's room, on every node (the `presence` frame)", {
                      200: Answer("the users with a connection in the room", PRESENCE), 503: _UNAVAILABLE},
                  params=job, tag="jobs"),
        ]

    async def get_job(self, request: ApiRequest) -> ApiResponse:
        job_id = request.params["jobId"]
        state = await self.job_log.load_job(job_id, 1)
        if state.last_seq == 0:
            return error_response(404, f"no event was ever published for job {job_id}")
        latest = json.loads(state.latest_status.payload) if state.latest_status is not None else None
        status = latest.get("data", {}).get("status") if isinstance(latest, dict) else None
        body: dict[str, Any] = {"jobId": job_id, "seq": state.last_seq}
        if state.epoch is not None:
            body["epoch"] = state.epoch
        body.update(status=status if isinstance(status, str) else None, latestStatus=latest)
        return json_response(200, body)

    async def get_events(self, request: ApiRequest) -> ApiResponse:
        job_id, after, limit = request.params["jobId"], request.query["after"], request.query["limit"]
        state = await self.job_log.read_job_page(job_id, after, limit + 1, self.history_size)
        if state.last_seq == 0:
            return error_response(404, f"no event was ever published for job {job_id}")
        # the oldest seq in history (a page read past pruned rows may hold none of it)
        first = state.events[0].seq if state.events else max(1, state.last_seq - self.history_size + 1)
        gap = _gap(state, after, first, request.query.get("epoch"))
        if gap is not None:
            extra: dict[str, Any] = {"jobId": job_id, "lastSeq": after, "firstSeq": first, "seq": state.last_seq}
            if state.epoch is not None:
                extra["epoch"] = state.epoch
            return error_response(410, gap, code=ErrorCode.HISTORY_GAP, **extra)
        page = state.events[:limit]
        head: dict[str, Any] = {"jobId": job_id, "seq": state.last_seq}
        if state.epoch is not None:
            head["epoch"] = state.epoch
        head["hasMore"] = len(state.events) > limit
        # the stored events are spliced in as they were sent: no decoding, no re-encoding
        body = encode(head)[:-1] + b',"events":[' + b",".join(e.payload for e in page) + b"]}"
        return ApiResponse(200, body)

    async def get_presence(self, request: ApiRequest) -> ApiResponse:
        job_id = request.params["jobId"]
        count, users = await self.job_rooms.presence(job_id)
        return json_response(200, {"type": "presence", "jobId": job_id, "count": count, "users": users})


def _gap(state: JobHistory, after: int, first: int, epoch: str | None) -> str | None:
    """Why the page cannot start right after ``after`` (``first``: the oldest seq in
    history), or None."""
    if epoch is not None and state.epoch is not None and epoch != state.epoch:
        return f"epoch {epoch} is gone: seqs restarted in epoch {state.epoch}"
    if after > state.last_seq:
        return f"after {after} is ahead of this job's seq {state.last_seq}"
    if after < state.last_seq and first > after + 1:
        return f"history starts at seq {first}; events after {after} up to {first - 1} are gone"
    return None
