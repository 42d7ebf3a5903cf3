"""Job rooms and authentication end to end: real broker, real trio-websocket clients."""

import time

import jwt
import pytest
import trio
import trio_websocket

from broker import serve
from broker.auth.tokens import issue_token
from broker.tools.httpclient import http_request
from tests.support.helpers import (
    API_KEY,
    JWT_SECRET,
    RawClient,
    expect_close,
    make_config,
    on_each_store,
    recv_json,
    recv_until,
    send_json,
)


def open_ws(broker, query="", headers=None):
    return trio_websocket.open_websocket_url(broker.url() + query, extra_headers=headers or [])


async def joined(ws, job_id, last_seq=None):
    message = {"type": "join_job", "jobId": job_id}
    if last_seq is not None:
        message["lastSeq"] = last_seq
    await send_json(ws, message)
    return await recv_until(ws, lambda m: m["type"] in ("joined", "error"))


@on_each_store
async def test_readme_flow_browser_client_and_http_publish(broker):
    """The issue's acceptance flow: ?token=demo-token, join, curl publish, exact event."""
    async with open_ws(broker, "?token=demo-token") as ws:
        established = await recv_json(ws)
        assert established["type"] == "connection_established"
        assert established["clientId"].startswith("client-") and established["userId"] == "ws-client"
        assert established["heartbeatInterval"] == 30000 and established["timestamp"].endswith("Z")
        assert (await joined(ws, "job-123"))["type"] == "joined"
        body = b'{"jobId":"job-123","type":"job_status","data":{"status":"RUNNING","currentStage":"OUTLINE","completedStages":["PLAN"]}}'
        response = await http_request("POST", f"http://127.0.0.1:{broker.port}/api/publish", body=body,
                                      headers={"Authorization": f"Bearer {API_KEY}"})
        assert response.status == 200
        event = await recv_json(ws)
        assert event["type"] == "job_status" and event["seq"] == 1
        assert event["data"]["jobId"] == "job-123"
        assert {k: event["data"][k] for k in ("status", "currentStage", "completedStages")} == {
            "status": "RUNNING", "currentStage": "OUTLINE", "completedStages": ["PLAN"]}
        assert list(event) == ["type", "seq", "data"] and event["data"]["timestamp"].endswith("Z")


@pytest.mark.parametrize("where", ["bearer", "websocket-header", "query", "frame"])
async def test_all_four_token_sources(broker, where):
    token = issue_token(JWT_SECRET, "alice", 60, {"jobs": "*"})
    query, headers = "", []
    if where == "bearer":
        headers = [(b"Authorization", f"Bearer {token}".encode())]
    elif where == "websocket-header":
        headers = [(b"websocket", token.encode())]
    elif where == "query":
        query = f"?token={token}"
    async with open_ws(broker, query, headers) as ws:
        if where == "frame":
            await send_json(ws, {"type": "auth", "token": token})
        established = await recv_json(ws)
        assert established["type"] == "connection_established" and established["userId"] == "alice"


@pytest.mark.parametrize(
    "token",
    [
        "not-a-valid-token",
        issue_token(JWT_SECRET, "alice", -300),  # expired
        jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, None, algorithm="none"),
        issue_token("another-secret-of-sufficient-length-000", "alice", 60),
    ],
    ids=["bad", "expired", "alg-none", "wrong-key"],
)
async def test_refused_tokens_get_unauthorized_then_1008(broker, token):
    async with open_ws(broker, f"?token={token}") as ws:
        error = await recv_json(ws)
        assert error == {"type": "error", "code": "UNAUTHORIZED", "message": "Authentication failed",
                         "timestamp": error["timestamp"]}
        assert await expect_close(ws) == 1008


async def test_first_frame_that_is_not_auth_is_refused(broker):
    async with open_ws(broker) as ws:
        await send_json(ws, {"type": "ping"})
        assert (await recv_json(ws))["code"] == "UNAUTHORIZED"
        assert await expect_close(ws) == 1008


async def test_join_policy_forbidden_keeps_socket_open(broker):
    token = issue_token(JWT_SECRET, "bob", 60, {"jobs": ["job-a*"]})
    async with open_ws(broker, f"?token={token}") as ws:
        await recv_json(ws)
        refused = await joined(ws, "job-b")
        assert refused["type"] == "error" and refused["code"] == "FORBIDDEN"
        assert (await joined(ws, "job-a1"))["type"] == "joined"
        await send_json(ws, {"type": "ping"})
        assert (await recv_json(ws))["type"] == "pong"


async def test_fan_out_to_every_member_and_leave(broker, fan_out):
    async with open_ws(broker, "?token=demo-token") as a, open_ws(broker, "?token=demo-token") as b:
        for ws in (a, b):
            await recv_json(ws)
            await joined(ws, "job-f")
        await broker.publish("job-f", "stage_completed", {"stage": "OUTLINE", "nextStage": "STORYBOARD"})
        for ws in (a, b):
            event = await recv_json(ws)
            assert event["type"] == "stage_completed" and event["seq"] == 1
            assert event["data"]["nextStage"] == "STORYBOARD"
        await send_json(b, {"type": "leave_job", "jobId": "job-f"})
        assert (await recv_json(b)) == {"type": "left", "jobId": "job-f"}
        await broker.publish("job-f", "job_error", {"error": "Stage execution failed", "stage": "STORYBOARD"})
        assert (await recv_json(a))["type"] == "job_error"
        await send_json(b, {"type": "ping"})
        assert (await recv_json(b))["type"] == "pong"  # b got no job_error before its pong


@on_each_store
async def test_late_joiner_gets_latest_status_at_once(broker):
    await broker.publish("job-l", "job_status", {"status": "QUEUED"})
    await broker.publish("job-l", "job_status", {"status": "RUNNING"})
    await broker.publish("job-l", "stage_completed", {"stage": "PLAN"})
    async with open_ws(broker, "?token=demo-token") as ws:
        await recv_json(ws)
        await send_json(ws, {"type": "join_job", "jobId": "job-l"})
        latest = await recv_json(ws)
        assert latest["type"] == "job_status" and latest["seq"] == 2 and latest["data"]["status"] == "RUNNING"
        assert await recv_json(ws) == {"type": "joined", "jobId": "job-l", "seq": 3}


@on_each_store
async def test_last_seq_replays_in_order_then_goes_live(broker, fan_out):
    for i in range(1, 6):
        await broker.publish("job-r", "job_status", {"status": f"S{i}"})
    async with open_ws(broker, "?token=demo-token") as ws:
        await recv_json(ws)
        await send_json(ws, {"type": "join_job", "jobId": "job-r", "lastSeq": 2})
        replay = [await recv_json(ws) for _ in range(3)]
        assert [e["seq"] for e in replay] == [3, 4, 5]
        assert (await recv_json(ws))["type"] == "joined"
        await broker.publish("job-r", "job_status", {"status": "S6"})
        assert (await recv_json(ws))["seq"] == 6


async def test_history_gap(tmp_path, nursery):
    broker = await nursery.start(serve, make_config(tmp_path, jobs={"history_size": 3}))
    for i in range(1, 8):
        await broker.publish("job-g", "job_status" if i % 2 else "stage_completed", {"status": f"S{i}", "stage": "x"})
    async with open_ws(broker, "?token=demo-token") as ws:
        await recv_json(ws)
        await send_json(ws, {"type": "join_job", "jobId": "job-g", "lastSeq": 1})
        gap = await recv_json(ws)
        assert gap["type"] == "error" and gap["code"] == "HISTORY_GAP" and gap["firstSeq"] == 5
        latest = await recv_json(ws)
        assert latest["type"] == "job_status" and latest["seq"] == 7
        assert (await recv_json(ws))["type"] == "joined"
        # within history: no gap
        await send_json(ws, {"type": "join_job", "jobId": "job-g", "lastSeq": 5})
        assert [(await recv_json(ws))["seq"] for _ in range(2)] == [6, 7]


async def test_twenty_malformed_frames_leave_connection_and_server_working(broker):
    async with open_ws(broker, "?token=demo-token") as ws, open_ws(broker, "?token=demo-token") as other:
        await recv_json(ws)
        await recv_json(other)
        bad = ["{", "[]", "null", '{"type":1}', '{"type":"nope"}', '{"type":"join_job"}', "\x00",
               '{"type":"join_job","jobId":"a b"}', '{"type":"join_job","jobId":"x","lastSeq":-5}', "x" * 1000]
        for i in range(20):
            await ws.send_message(bad[i % len(bad)])
        for _ in range(20):
            error = await recv_json(ws)
            assert error["type"] == "error" and error["code"] == "BAD_REQUEST" and error["message"]
        await ws.send_message(b"\x01\x02")  # binary frame
        assert (await recv_json(ws))["code"] == "BAD_REQUEST"
        await send_json(ws, {"type": "ping"})
        assert (await recv_json(ws))["type"] == "pong"
        await send_json(other, {"type": "ping"})
        assert (await recv_json(other))["type"] == "pong"
    assert (await http_request("GET", f"http://127.0.0.1:{broker.port}/health")).status == 200


async def test_oversized_frame_closes_with_1009(tmp_path, nursery):
    broker = await nursery.start(serve, make_config(tmp_path, websocket={"max_frame_bytes": 1024}))
    async with open_ws(broker, "?token=demo-token") as ws:
        await recv_json(ws)
        await ws.send_message("x" * 5000)
        assert await expect_close(ws) == 1009


async def test_slow_consumer_is_closed_with_4003_and_others_keep_going(tmp_path, nursery, fan_out):
    broker = await nursery.start(serve, make_config(tmp_path, websocket={"outbox_max_bytes": 65536}))
    stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
    slow = RawClient(stream)  # joins, then stops reading
    assert (await slow.handshake("/ws?token=demo-token"))[0] == 101
    assert (await slow.next_json())["type"] == "connection_established"
    await slow.send_json({"type": "join_job", "jobId": "job-s"})
    assert (await slow.next_json())["type"] == "joined"
    async with open_ws(broker, "?token=demo-token") as fast:
        await recv_json(fast)
        await joined(fast, "job-s")
        payload = {"status": "RUNNING", "blob": "y" * 16000}
        evicted = False
        for i in range(2000):
            await broker.publish("job-s", "job_status", payload)
            assert (await recv_json(fast))["seq"] == i + 1
            text = broker.metrics.render().decode()
            if 'broker_evictions_total{reason="slow_consumer"} 1.0' in text:
                evicted = True
                break
        assert evicted
    # Reading again, the slow client gets what was queued, then the 4003 close frame.
    with trio.fail_after(10):
        code, reason = await slow.expect_close()
    assert code == 4003 and "slow consumer" in reason


async def test_job_rooms_are_capped_running_rooms_go_on(tmp_path, nursery):
    broker = await nursery.start(serve, make_config(tmp_path, jobs={"max_rooms": 1}))

    async def publish(job_id):
        body = f'{{"jobId":"{job_id}","type":"job_status","data":{{"status":"RUNNING"}}}}'.encode()
        return await http_request("POST", f"http://127.0.0.1:{broker.port}/api/publish", body=body,
                                  headers={"Authorization": f"Bearer {API_KEY}"})

    async with open_ws(broker, "?token=demo-token") as ws:
        await recv_json(ws)
        assert (await joined(ws, "job-a"))["type"] == "joined"
        refused = await joined(ws, "job-b")
        assert refused["code"] == "UNAVAILABLE" and "too many active job rooms" in refused["message"]
        response = await publish("job-b")
        assert response.status == 503 and b"too many active job rooms" in response.body
        assert (await publish("job-a")).status == 200  # the running room is not affected
        assert (await recv_json(ws))["seq"] == 1


async def test_an_event_larger_than_clients_accept_is_refused_and_never_becomes_the_latest_status(tmp_path, nursery):
    from broker.client.broker_client import open_client
    from broker.protocols import ErrorCode, JobEvent, ProtocolError

    broker = await nursery.start(serve, make_config(tmp_path, server={"max_body_bytes": 2 << 20}))
    limit = broker.config.websocket.outgoing_frame_limit

    async def publish(size):
        body = f'{{"jobId":"job-big","type":"job_status","data":{{"status":"RUNNING","blob":"{"x" * size}"}}}}'
        return await http_request("POST", f"http://127.0.0.1:{broker.port}/api/publish", body=body.encode(),
                                  headers={"Authorization": f"Bearer {API_KEY}"})

    assert (await publish(limit // 2)).status == 200
    for size in (limit, 1 << 20):  # a 1 MiB event once became every later joiner's first frame
        response = await publish(size)
        assert response.status == 413 and b"MESSAGE_TOO_BIG" in response.body
    with pytest.raises(ProtocolError) as info:
        await broker.publish("job-big", "job_status", {"status": "RUNNING", "blob": "x" * limit})
    assert info.value.code is ErrorCode.MESSAGE_TOO_BIG
    with pytest.raises(ProtocolError):
        await broker.publish_events([JobEvent("job-big", "job_status", {"status": "X", "blob": "x" * limit})])
    # the broker's own client joins and gets the latest status that was accepted
    async with open_client(broker.url(), token="demo-token") as client:
        await client.join_job("job-big")
        with trio.fail_after(5):
            event = await client.next_event()
        assert event["seq"] == 1 and len(event["data"]["blob"]) == limit // 2
