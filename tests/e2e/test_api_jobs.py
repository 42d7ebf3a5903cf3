"""Server API, job routes, one node end to end: latest status, history pages with
HISTORY_GAP, presence (docs/PROTOCOL.md section 8.2)."""

import trio_websocket

from broker.auth.tokens import issue_token
from tests.support.helpers import JWT_SECRET, api_request, make_config, recv_until, send_json


async def publish(broker, job_id, kind, data, **extra):
    return await api_request(broker.port, "POST", "/api/publish", {"jobId": job_id, "type": kind, "data": data, **extra})


async def test_a_job_never_published_is_404_then_its_latest_status(broker):
    status, body = await api_request(broker.port, "GET", "/api/jobs/job-1")
    assert status == 404 and body["type"] == "error" and body["code"] == "NOT_FOUND"
    await publish(broker, "job-1", "job_status", {"status": "RUNNING", "currentStage": "PLAN"})
    await publish(broker, "job-1", "stage_completed", {"stage": "PLAN"})
    status, body = await api_request(broker.port, "GET", "/api/jobs/job-1")
    assert status == 200
    assert body["jobId"] == "job-1" and body["seq"] == 2 and body["status"] == "RUNNING" and "epoch" not in body
    assert body["latestStatus"]["type"] == "job_status" and body["latestStatus"]["seq"] == 1
    assert body["latestStatus"]["data"]["currentStage"] == "PLAN"


async def test_a_job_with_events_but_no_status_has_a_null_status(broker):
    await publish(broker, "job-2", "stage_completed", {"stage": "PLAN"})
    assert await api_request(broker.port, "GET", "/api/jobs/job-2") == (
        200, {"jobId": "job-2", "seq": 1, "status": None, "latestStatus": None})


async def test_history_pages_oldest_first_with_has_more(broker):
    for index in range(5):
        await publish(broker, "job-3", "job_status", {"status": f"S{index}"})
    status, page = await api_request(broker.port, "GET", "/api/jobs/job-3/events?after=0&limit=2")
    assert status == 200 and page["seq"] == 5 and page["hasMore"] is True
    assert [e["seq"] for e in page["events"]] == [1, 2]
    assert page["events"][0] == {"type": "job_status", "seq": 1, "data": {
        "jobId": "job-3", "status": "S0", "timestamp": page["events"][0]["data"]["timestamp"]}}
    status, page = await api_request(broker.port, "GET", "/api/jobs/job-3/events?after=2&limit=2")
    assert [e["seq"] for e in page["events"]] == [3, 4] and page["hasMore"] is True
    status, page = await api_request(broker.port, "GET", "/api/jobs/job-3/events?after=4&limit=2")
    assert [e["seq"] for e in page["events"]] == [5] and page["hasMore"] is False
    status, page = await api_request(broker.port, "GET", "/api/jobs/job-3/events?after=5")
    assert status == 200 and page["events"] == [] and page["hasMore"] is False
    status, page = await api_request(broker.port, "GET", "/api/jobs/job-3/events")  # after=0, limit=100
    assert [e["seq"] for e in page["events"]] == [1, 2, 3, 4, 5]


async def test_history_older_than_kept_or_ahead_is_a_history_gap(tmp_path, nursery):
    from broker import serve

    broker = await nursery.start(serve, make_config(tmp_path, jobs={"history_size": 3}))
    for index in range(6):
        await publish(broker, "job-4", "job_status", {"status": f"S{index}"})
    status, gap = await api_request(broker.port, "GET", "/api/jobs/job-4/events?after=1")
    assert status == 410 and gap["code"] == "HISTORY_GAP"
    assert (gap["jobId"], gap["lastSeq"], gap["firstSeq"], gap["seq"]) == ("job-4", 1, 4, 6)
    status, page = await api_request(broker.port, "GET", f"/api/jobs/job-4/events?after={gap['firstSeq'] - 1}")
    assert status == 200 and [e["seq"] for e in page["events"]] == [4, 5, 6]
    status, ahead = await api_request(broker.port, "GET", "/api/jobs/job-4/events?after=9")
    assert status == 410 and ahead["code"] == "HISTORY_GAP" and ahead["seq"] == 6
    status, _ = await api_request(broker.port, "GET", "/api/jobs/nope/events")
    assert status == 404


async def test_bad_parameters_are_400_with_the_error_shape(broker):
    for target in ("/api/jobs/job-1/events?limit=0", "/api/jobs/job-1/events?limit=abc",
                   "/api/jobs/job-1/events?after=-1", "/api/jobs/job-1/events?limit=100000",
                   "/api/jobs/%20bad/events", "/api/jobs/a%0A"):
        status, body = await api_request(broker.port, "GET", target)
        assert status == 400 and body["type"] == "error" and body["code"] == "BAD_REQUEST", (target, body)


async def test_presence_is_the_presence_frame(broker):
    status, body = await api_request(broker.port, "GET", "/api/jobs/job-5/presence")
    assert (status, body) == (200, {"type": "presence", "jobId": "job-5", "count": 0, "users": []})
    headers = [(b"Authorization", f"Bearer {issue_token(JWT_SECRET, 'alice', 3600, {'jobs': '*'})}".encode())]
    async with trio_websocket.open_websocket_url(broker.url(), extra_headers=headers) as ws:
        await send_json(ws, {"type": "join_job", "jobId": "job-5"})
        await recv_until(ws, lambda m: m.get("type") == "joined")
        status, body = await api_request(broker.port, "GET", "/api/jobs/job-5/presence")
        assert (status, body) == (200, {"type": "presence", "jobId": "job-5", "count": 1, "users": ["alice"]})
