"""The low-severity defects of issue 20, section 3, each end to end: read receipts,
user ids with control or bidi characters, a JWT sub that would forge a log line, an
absurd chunk size, and 304 answers."""

from __future__ import annotations

import json
import logging

import jwt
import pytest
import trio
import trio_websocket

from broker.auth.tokens import issue_token
from broker.tools.httpclient import http_request
from tests.support.clients import chat, user
from tests.support.cluster import nodes
from tests.support.helpers import API_KEY, JWT_SECRET, expect_close, recv_json, send_json
from tests.support.services import redis_server


async def api_at(port: int, method: str, path: str, body: object = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else b""
    response = await http_request(method, f"http://127.0.0.1:{port}{path}", body=data,
                                  headers={"Authorization": f"Bearer {API_KEY}"})
    return response.status, json.loads(response.body)


async def no_receipt(ws) -> None:
    """Nothing was relayed before this: the next frame is the answer to a ping."""
    await send_json(ws, {"type": "ping"})
    assert (await recv_json(ws))["type"] == "pong"


async def test_reads_of_another_conversations_message_or_below_the_position_relay_no_receipt(broker):
    async with user(broker, "alice") as alice, user(broker, "bob") as bob, user(broker, "carol") as carol:
        await chat(alice, recvId="carol", chatType=2, content="not bob's", contentType=1)
        other = await recv_json(carol)
        await recv_json(alice)
        for text in ("one", "two"):
            await chat(alice, recvId="bob", chatType=2, content=text, contentType=1)
        first, second = await recv_json(bob), await recv_json(bob)
        await recv_json(alice), await recv_json(alice)
        conversation = first["conversationId"]
        assert other["msgId"] < second["msgId"]  # so only "is it this conversation's" refuses it
        await send_json(bob, {"type": "read", "conversationId": conversation, "msgId": other["msgId"]})
        refused = await recv_json(bob)
        assert refused["code"] == "BAD_REQUEST" and "not a message of" in refused["message"]
        await no_receipt(alice)
        await send_json(bob, {"type": "read", "conversationId": conversation, "msgId": second["msgId"]})
        assert (await recv_json(alice))["msgId"] == second["msgId"]
        for msg_id in (first["msgId"], second["msgId"]):  # below, then at the position: ignored
            await send_json(bob, {"type": "read", "conversationId": conversation, "msgId": msg_id})
        await no_receipt(bob)
        await no_receipt(alice)


async def test_user_ids_with_control_or_bidi_characters_are_refused(broker):
    async with user(broker, "alice") as alice:
        for recv in ("bob\n", "b\x00b", "\u202ebob", "bo\u200fb"):
            await send_json(alice, {"chatType": 2, "recvId": recv, "content": "hi"})
            refused = await recv_json(alice)
            assert refused["code"] == "BAD_REQUEST" and "recvId" in refused["message"]
    for member in ("a\x00b", "carol\n", "\u202eevil"):
        status, answer = await api_at(broker.port, "POST", "/api/groups", {"groupId": "g", "members": [member]})
        assert status == 400 and answer["code"] == "BAD_REQUEST", (member, answer)
    status, _ = await api_at(broker.port, "GET", "/api/users/a%00b/groups")
    assert status == 400


@pytest.mark.cluster  # a real redis-server
async def test_in_a_cluster_a_nul_member_is_400_not_503(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 1) as (node,):
        status, answer = await api_at(node.port, "POST", "/api/groups", {"groupId": "g", "members": ["a\x00b"]})
        assert status == 400 and answer["code"] == "BAD_REQUEST"
        status, answer = await api_at(node.port, "POST", "/api/groups", {"groupId": "g", "members": ["ab"]})
        assert status == 201


async def test_a_jwt_sub_with_a_newline_is_refused_and_forges_no_log_line(broker, caplog):
    caplog.set_level(logging.INFO)
    forged = "alice\n2026-01-01 INFO broker.connection client-x connected as admin"
    token = jwt.encode({"sub": forged, "exp": 4102444800}, JWT_SECRET, algorithm="HS256")
    async with trio_websocket.open_websocket_url(broker.url(), extra_headers=[
            (b"Authorization", f"Bearer {token}".encode())]) as ws:
        assert (await recv_json(ws))["code"] == "UNAUTHORIZED"
        assert await expect_close(ws) == 1008
    assert not any("\n" in record.getMessage() for record in caplog.records)
    assert issue_token(JWT_SECRET, "alice", 60)  # an ordinary sub still works (see test_auth)


async def test_an_absurd_chunk_size_gets_413_at_once(broker):
    stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
    async with stream:
        await stream.send_all(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: " + API_KEY.encode()
                              + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + b"F" * 20 + b"\r\n")  # 2^80 - 1: h11's most
        received = b""
        with trio.fail_after(3):  # well before request_head_timeout's 408
            while b"\r\n\r\n" not in received:
                chunk = await stream.receive_some(65536)
                assert chunk
                received += chunk
        assert received.startswith(b"HTTP/1.1 413")


async def test_a_304_carries_no_content_length(broker):
    stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
    async with stream:
        async def get(extra: bytes = b"") -> bytes:
            await stream.send_all(b"GET /client/broker-client.mjs HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
            received = b""
            with trio.fail_after(5):
                while b"\r\n\r\n" not in received:
                    received += await stream.receive_some(65536)
            head, _, rest = received.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(rest) < length:
                rest += await stream.receive_some(65536)
            return head

        first = await get()
        etag = next(line.split(b": ", 1)[1] for line in first.split(b"\r\n") if line.lower().startswith(b"etag:"))
        again = await get(b"If-None-Match: " + etag + b"\r\n")
        assert again.startswith(b"HTTP/1.1 304")
        names = {line.split(b":", 1)[0].lower() for line in again.split(b"\r\n")[1:]}
        assert b"content-length" not in names and b"content-type" not in names and b"etag" in names
        assert (await get()).startswith(b"HTTP/1.1 200")  # the connection goes on: the 304 had no body



async def test_conversation_ids_with_control_characters_are_bad_requests_not_store_errors(broker):
    async with user(broker, "alice") as alice:
        for conversation in ("a\x00b", "p:5:alice:b\x00b", "p:5:alice:\u202ebob"):
            await send_json(alice, {"type": "presence", "conversationId": conversation})
            refused = await recv_json(alice)
            assert refused["code"] == "BAD_REQUEST", refused
    status, _ = await api_at(broker.port, "GET", "/api/groups/a%00b")
    assert status == 400  # the route table checks group ids before any lookup: never a store error
