"""An unreachable backplane is answered as before BackplaneUnavailable stopped being a
StoreError: 503 over HTTP, UNAVAILABLE (and 1013 for a login) over the WebSocket,
and the connection that asked keeps working. A real broker over loopback whose
backplane roles fail as the Redis ones do when Redis cannot be reached."""

from __future__ import annotations

import json

import trio_websocket

from broker.auth.tokens import issue_token
from broker.cluster import BackplaneUnavailable
from broker.protocols.chat import private_conversation_id
from broker.store import StoreError
from broker.tools.httpclient import http_request
from tests.support.helpers import API_KEY, JWT_SECRET, expect_close, recv_json, recv_until, send_json


async def unreachable(*args, **kwargs):
    raise BackplaneUnavailable("redis: connection lost")


def test_backplane_unavailable_is_not_a_store_error():
    assert not issubclass(BackplaneUnavailable, StoreError)


async def test_a_publish_the_job_log_cannot_take_is_503_and_the_next_one_goes_through(broker, monkeypatch):
    body = b'{"jobId":"job-u","type":"job_status","data":{"status":"RUNNING"}}'
    url = f"http://127.0.0.1:{broker.port}/api/publish"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with monkeypatch.context() as patch:
        patch.setattr(broker.broker.backplane.job_log, "send_job_events", unreachable)
        refused = await http_request("POST", url, body=body, headers=headers)
    assert refused.status == 503
    assert json.loads(refused.body)["code"] == "UNAVAILABLE"
    accepted = await http_request("POST", url, body=body, headers=headers)
    assert accepted.status == 200 and json.loads(accepted.body)["seq"] == 1


async def test_a_login_the_backplane_cannot_record_is_refused_with_unavailable_and_1013(broker, monkeypatch):
    monkeypatch.setattr(broker.broker.backplane.logins, "claim_login", unreachable)
    token = issue_token(JWT_SECRET, "alice", 60, {"jobs": "*"})
    async with trio_websocket.open_websocket_url(broker.url(f"/ws?token={token}")) as ws:
        error = await recv_json(ws)
        assert error["type"] == "error" and error["code"] == "UNAVAILABLE"
        assert await expect_close(ws) == 1013


async def test_presence_the_backplane_cannot_read_is_unavailable_and_the_connection_goes_on(broker, monkeypatch):
    monkeypatch.setattr(broker.broker.backplane.presence, "job_presence", unreachable)
    monkeypatch.setattr(broker.broker.backplane.logins, "users_online", unreachable)
    token = issue_token(JWT_SECRET, "alice", 60, {"jobs": "*"})
    async with trio_websocket.open_websocket_url(broker.url(f"/ws?token={token}")) as ws:
        await recv_until(ws, lambda m: m["type"] == "connection_established")
        for scope in ({"jobId": "job-p"}, {"conversationId": private_conversation_id("alice", "bob")}):
            await send_json(ws, {"type": "presence", **scope})
            answer = await recv_until(ws, lambda m: m["type"] in ("presence", "error"))
            assert answer["type"] == "error" and answer["code"] == "UNAVAILABLE", answer
        await send_json(ws, {"type": "ping"})
        assert (await recv_until(ws, lambda m: m["type"] == "pong"))["type"] == "pong"
