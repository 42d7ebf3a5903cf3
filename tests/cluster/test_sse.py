"""The SSE transport in a cluster: two brokers sharing one redis-server and one
PostgreSQL store (tests/services.py). An SSE session is a session like any other: job
events published on another node, chat from a user on another node and single login
across nodes reach it as they reach a WebSocket. Its POSTs belong to the node that holds
the stream: another node answers 404."""

from __future__ import annotations

import trio
import trio_websocket

from broker.auth.tokens import issue_token
from tests.support.cluster import nodes
from tests.support.helpers import JWT_SECRET, recv_until, send_json
from tests.support.services import redis_server
from tests.support.sse_client import open_sse


def jwt_for(user: str) -> str:
    return issue_token(JWT_SECRET, user, 60, {"jobs": "*"})


async def test_sse_session_gets_events_chat_and_replacement_from_another_node(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2) as (first, second):
        alice, bob = jwt_for("alice"), jwt_for("bob")
        with trio.fail_after(20):
            client = await open_sse(first, token=alice)
            assert (await client.next_json())["type"] == "connection_established"
            assert (await client.next_json())["type"] == "offline_complete"
            await client.send_json({"type": "join_job", "jobId": "job-c"})
            assert (await client.next_json())["type"] == "joined"

            await second.publish("job-c", "job_status", {"status": "FROM-N1"})
            event = await client.next_json()
            assert (event["type"], event["seq"], event["data"]["status"]) == ("job_status", 1, "FROM-N1")

            # a POST that reaches the other node: the stream is not there
            wrong = client.open_stream

            async def to_second():
                return await trio.open_tcp_stream("127.0.0.1", second.port)

            client.open_stream = to_second
            assert (await client.post(b'{"type":"ping"}'))[0] == 404
            client.open_stream = wrong

            url = f"ws://127.0.0.1:{second.port}/ws?token={bob}"
            async with trio_websocket.open_websocket_url(url) as ws:
                await recv_until(ws, lambda m: m["type"] == "offline_complete")
                await send_json(ws, {"conversationId": "", "recvId": "alice", "chatType": 2, "content": "hi",
                                     "contentType": 1})
                ack = await recv_until(ws, lambda m: m["type"] == "chat_ack")
                chat = await client.next_json()
                assert (chat["content"], chat["msgId"], chat["sendId"]) == ("hi", ack["msgId"], "bob")
                await client.send_json({"conversationId": "", "recvId": "bob", "chatType": 2, "content": "hello",
                                        "contentType": 1})
                assert (await client.next_json())["type"] == "chat_ack"
                assert (await recv_until(ws, lambda m: m.get("content") == "hello"))["sendId"] == "alice"

            # single login across nodes: alice logs in on the other node, the stream is replaced
            url = f"ws://127.0.0.1:{second.port}/ws?token={alice}"
            async with trio_websocket.open_websocket_url(url) as newer:
                await recv_until(newer, lambda m: m["type"] == "connection_established")
                assert await client.expect_close() == (4001, "replaced by a newer login")
