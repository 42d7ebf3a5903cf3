"""Lone surrogates (issue 20, section 3) end to end: ``"\\ud800"`` is legal JSON but no
UTF-8, and once crashed shared actors. Each is refused where it enters, the connection
stays usable, and nothing shared notices. Real broker, real clients over loopback."""

from __future__ import annotations

import json
import logging

import pytest
import trio_websocket

from broker.auth.tokens import issue_token
from broker.tools.httpclient import http_request
from tests.support.cluster import nodes
from tests.support.helpers import API_KEY, JWT_SECRET, expect_close, recv_json, recv_until
from tests.support.services import redis_server

LONE = "\ud800"  # json.dumps writes it as the escape a client sends: "\\ud800"


def bearer(user: str) -> list[tuple[bytes, bytes]]:
    return [(b"Authorization", f"Bearer {issue_token(JWT_SECRET, user, 3600)}".encode())]


async def api_at(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
    response = await http_request(method, f"http://127.0.0.1:{port}{path}", body=body,
                                  headers={"Authorization": f"Bearer {API_KEY}"})
    return response.status, json.loads(response.body)


async def expect_bad_request(ws) -> dict:
    error = await recv_until(ws, lambda m: m.get("type") == "error")
    assert error["code"] == "BAD_REQUEST" and "surrogate" in error["message"], error
    return error


async def test_presence_frames_with_a_lone_surrogate_leave_the_store_and_broker_up(broker):
    async with trio_websocket.open_websocket_url(broker.url(), extra_headers=bearer("mallory")) as ws:
        await recv_until(ws, lambda m: m.get("type") == "offline_complete")
        for _ in range(6):  # more than the store actor's restart intensity once allowed
            await ws.send_message(json.dumps({"type": "presence", "conversationId": LONE}))
            await expect_bad_request(ws)
        await ws.send_message('{"type":"ping"}')  # the connection is still usable
        assert (await recv_json(ws))["type"] == "pong"
    # the store still serves: a group is made and read back
    status, _ = await api_at(broker.port, "POST", "/api/groups",
                          json.dumps({"groupId": "team", "members": ["alice"]}).encode())
    assert status == 201
    assert (await api_at(broker.port, "GET", "/api/groups/team"))[1]["members"] == ["alice"]


async def test_one_members_lone_surrogates_do_not_cost_the_others_their_sends(broker):
    status, _ = await api_at(broker.port, "POST", "/api/groups",
                          json.dumps({"groupId": "team", "members": ["alice", "bob", "carol"]}).encode())
    assert status == 201
    async with trio_websocket.open_websocket_url(broker.url(), extra_headers=bearer("alice")) as alice, \
            trio_websocket.open_websocket_url(broker.url(), extra_headers=bearer("bob")) as bob:
        for ws in (alice, bob):
            await recv_until(ws, lambda m: m.get("type") == "offline_complete")
        for i in range(6):
            await alice.send_message(json.dumps({"chatType": 1, "conversationId": "team", "content": f"x{LONE}{i}",
                                                 "clientMsgId": f"m{i}"}))
            await expect_bad_request(alice)
            await alice.send_message(json.dumps({"chatType": 1, "conversationId": "team", "content": "ok",
                                                 "clientMsgId": LONE}))
            await expect_bad_request(alice)
        for i in range(20):
            await bob.send_message(json.dumps({"chatType": 1, "conversationId": "team", "content": f"b{i}",
                                               "clientMsgId": f"b{i}"}))
            ack = await recv_until(bob, lambda m: m.get("type") in ("chat_ack", "error"))
            assert ack["type"] == "chat_ack" and ack["clientMsgId"] == f"b{i}", ack
        got = await recv_until(alice, lambda m: m.get("content") == "b19")
        assert got["sendId"] == "bob"


async def test_a_publish_with_a_lone_surrogate_in_data_gets_400(broker):
    body = json.dumps({"jobId": "job-1", "type": "job_status", "data": {"status": "running", "note": LONE}}).encode()
    status, answer = await api_at(broker.port, "POST", "/api/publish", body)
    assert status == 400 and answer["code"] == "BAD_REQUEST" and "surrogate" in answer["message"]
    status, answer = await api_at(broker.port, "POST", "/api/publish",
                               json.dumps({"jobId": "job-1", "type": "job_status", "data": {"status": "ok"}}).encode())
    assert status == 200 and answer["seq"] == 1
    status, answer = await api_at(broker.port, "PUT", "/api/groups/team/members",
                               json.dumps({"members": ["a" + LONE]}).encode())
    assert status == 400 and "surrogate" in answer["message"]


async def test_an_auth_frame_with_a_lone_surrogate_is_refused_with_1008_and_no_traceback(broker, caplog):
    caplog.set_level(logging.INFO)
    for frame in (json.dumps({"type": "auth", "token": LONE}),
                  json.dumps({"type": "auth", "token": "demo-token", "x": LONE})):
        async with trio_websocket.open_websocket_url(broker.url()) as ws:
            await ws.send_message(frame)
            error = await recv_json(ws)
            assert error["code"] == "UNAUTHORIZED"
            assert await expect_close(ws) == 1008
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.mark.cluster  # a real redis-server
async def test_a_cluster_join_with_a_lone_surrogate_epoch_leaves_the_jobs_watchers_open(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 1) as (node,):
        await node.publish("job-w", "job_status", {"status": "one"})
        async with trio_websocket.open_websocket_url(node.url("/ws?token=demo-token")) as watcher, \
                trio_websocket.open_websocket_url(node.url("/ws?token=demo-token")) as mallory:
            for ws in (watcher, mallory):
                await recv_json(ws)
            await watcher.send_message('{"type":"join_job","jobId":"job-w"}')
            await recv_until(watcher, lambda m: m.get("type") == "joined")
            await mallory.send_message(json.dumps({"type": "join_job", "jobId": "job-w", "lastSeq": 0, "lastEpoch": LONE}))
            await expect_bad_request(mallory)
            await node.publish("job-w", "job_status", {"status": "two"})
            event = await recv_until(watcher, lambda m: m.get("type") == "job_status")
            assert event["data"]["status"] == "two" and event["seq"] == 2
            await mallory.send_message('{"type":"ping"}')
            assert (await recv_json(mallory))["type"] == "pong"


async def test_a_query_token_encoding_a_surrogate_is_refused_with_1008(broker, caplog):
    """Query parameters are decoded with replacement characters: UTF-8 of a surrogate
    (``%ED%A0%80``) is no lone surrogate by the time it is a token, just a wrong one."""
    caplog.set_level(logging.INFO)
    async with trio_websocket.open_websocket_url(broker.url("/ws?token=%ED%A0%80")) as ws:
        assert (await recv_json(ws))["code"] == "UNAUTHORIZED"
        assert await expect_close(ws) == 1008
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
