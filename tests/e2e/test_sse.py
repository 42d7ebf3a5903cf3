"""The SSE fallback transport end to end: a real broker on loopback, a Python SSE client
(h11 + broker.protocols.sse) for the stream, one-shot HTTP connections for the POSTs.
Every wait is bounded by ``trio.fail_after``."""

import json

import trio

from broker import serve
from broker.auth.tokens import issue_token
from broker.protocols import JobEvent
from tests.support.helpers import DEMO_TOKEN, JWT_SECRET, make_config
from tests.support.sse_client import SseTestClient, http_request, open_sse


def jwt_for(user: str) -> str:
    return issue_token(JWT_SECRET, user, 60, {"jobs": "*"})


async def test_stream_carries_the_websocket_frames_and_posts_drive_the_session(broker):
    token = jwt_for("alice")
    with trio.fail_after(10):
        client = await open_sse(broker, token=token)
        headers = client.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["x-accel-buffering"] == "no"
        assert "content-length" not in headers and headers["transfer-encoding"] == "chunked"
        assert len(client.stream_id) >= 40  # 32 random bytes, url-safe
        established = await client.next_json()
        assert established["type"] == "connection_established" and established["userId"] == "alice"
        assert (await client.next_json())["type"] == "offline_complete"
        await client.send_json({"type": "join_job", "jobId": "job-1"})
        assert (await client.next_json())["type"] == "joined"
        await broker.publish("job-1", "job_status", {"status": "RUNNING"})
        event = await client.next_json()
        assert (event["type"], event["seq"], event["data"]["status"]) == ("job_status", 1, "RUNNING")
        await client.send_json({"type": "ping"})
        assert (await client.next_json())["type"] == "pong"
        await client.send_json({"type": "nonsense"})
        assert (await client.next_json())["code"] == "BAD_REQUEST"  # answered; the stream goes on
        await client.send_json({"type": "leave_job", "jobId": "job-1"})
        assert (await client.next_json())["type"] == "left"
        broker.broker.hub.evict_all(1001, "server shutting down", "shutdown")
        assert await client.expect_close() == (1001, "server shutting down")


async def test_token_in_the_first_post_then_every_post_carries_the_same_principal(broker):
    alice, bob = jwt_for("alice"), jwt_for("bob")
    with trio.fail_after(10):
        client = await open_sse(broker)  # nothing in the URL, no header
        # a POST with the token in its header and an empty body authenticates the stream
        assert (await client.post(b"", token=alice))[0] == 204
        assert (await client.next_json())["userId"] == "alice"
        assert (await client.next_json())["type"] == "offline_complete"
        join = json.dumps({"type": "join_job", "jobId": "job-1"}).encode()
        status, body = await client.post(join, token="")
        assert status == 401 and b"Authorization" in body
        assert (await client.post(join, token=bob))[0] == 403
        assert (await client.post(join, token="not-a-token"))[0] == 403
        assert (await client.post(join, token=alice))[0] == 204
        assert (await client.next_json())["type"] == "joined"
        assert (await client.post(join, token=alice, stream_id="guessed"))[0] == 404


async def test_auth_frame_in_the_first_post_body(broker):
    with trio.fail_after(10):
        client = await open_sse(broker)
        await client.send_json({"type": "auth", "token": DEMO_TOKEN})
        assert (await client.next_json())["type"] == "connection_established"


async def test_bad_token_is_refused_as_over_websocket(broker):
    with trio.fail_after(10):
        client = await open_sse(broker, token="wrong-token-value")
        refusal = await client.next_json()
        assert (refusal["type"], refusal["code"]) == ("error", "UNAUTHORIZED")
        assert await client.expect_close() == (1008, "authentication failed")
        assert (await client.post(b'{"type":"ping"}'))[0] == 404  # the stream is gone


async def test_message_over_the_frame_limit_is_413_and_closes_1009(broker):
    with trio.fail_after(10):
        client = await open_sse(broker, token=DEMO_TOKEN)
        await client.next_json()
        limit = broker.config.websocket.max_frame_bytes
        status, _ = await client.post(b'{"type":"ping","pad":"' + b"x" * limit + b'"}')
        assert status == 413
        code, reason = await client.expect_close()
        assert code == 1009 and str(limit) in reason


async def test_http10_stream_is_ended_by_close_not_chunked(broker):
    with trio.fail_after(10):
        client = await open_sse(broker, token=DEMO_TOKEN, http10=True)
        assert "transfer-encoding" not in client.headers and "content-length" not in client.headers
        assert client.headers["connection"] == "close"
        assert (await client.next_json())["type"] == "connection_established"
        broker.broker.hub.evict_all(4001, "replaced", "test")
        assert (await client.expect_close())[0] == 4001


async def test_client_going_away_ends_its_session(broker):
    with trio.fail_after(10):
        client = await open_sse(broker, token=DEMO_TOKEN)
        await client.next_json()
        assert len(broker.broker.hub) == 1
        await client.stream.aclose()
        await broker.broker.hub.wait_empty()


async def test_metrics_are_labelled_by_transport(broker):
    with trio.fail_after(10):
        client = await open_sse(broker, token=DEMO_TOKEN)
        await client.next_json()
        await client.send_json({"type": "ping"})
        await client.next_json()
        stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
        status, body = await http_request(stream, "GET", "/metrics", [("Host", "test")])
        text = body.decode()
        assert status == 200
        assert 'broker_connections_total{transport="sse"} 1.0' in text
        assert 'broker_connections_open{transport="sse"} 1.0' in text
        assert 'broker_connections_open{transport="websocket"} 0.0' in text
        assert 'broker_messages_in_total{transport="sse"} 1.0' in text


async def test_draining_refuses_new_streams_and_closes_open_ones_with_1001(nursery, tmp_path):
    handle = await nursery.start(serve, make_config(tmp_path))
    with trio.fail_after(10):
        client = await open_sse(handle, token=DEMO_TOKEN)
        await client.next_json()
        nursery.start_soon(handle.shutdown)
        assert (await client.expect_close())[0] == 1001


async def test_other_origin_needs_the_allow_list_and_gets_cors(nursery, tmp_path):
    config = make_config(tmp_path, limits={"allowed_origins": ("https://app.example",)})
    handle = await nursery.start(serve, config)

    async def connect():
        return await trio.open_tcp_stream("127.0.0.1", handle.port)

    with trio.fail_after(10):
        refused = SseTestClient(await connect(), connect)
        status, body = await refused.open(headers=[("Origin", "https://evil.example")])
        assert status == 403 and b"allowed_origins" in body
        client = await open_sse(handle, token=DEMO_TOKEN, headers=[("Origin", "https://app.example")])
        assert client.headers["access-control-allow-origin"] == "https://app.example"
        status, _ = await http_request(await connect(), "OPTIONS", "/sse", [
            ("Host", "test"), ("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST")])
        assert status == 204


async def test_chat_over_sse_offline_replay_and_delivery_confirmed_by_pongs(broker):
    """Chat both ways between an SSE client and a WebSocket one. The offline replay and the
    delivery confirmation ride on the stream's ping comments and the POSTed pongs: a
    message confirmed once is not delivered again on the next connection."""
    import trio_websocket

    from tests.support.helpers import recv_until, send_json

    alice, bob = jwt_for("alice"), jwt_for("bob")
    with trio.fail_after(15):
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{broker.port}/ws?token={alice}") as ws:
            await recv_until(ws, lambda m: m["type"] == "offline_complete")
            await send_json(ws, {"conversationId": "", "recvId": "bob", "chatType": 2, "content": "while away",
                                 "contentType": 1})
            first = await recv_until(ws, lambda m: m["type"] == "chat_ack")

            client = await open_sse(broker, token=bob)  # bob comes online over SSE
            assert (await client.next_json())["type"] == "connection_established"
            replayed = await client.next_json()
            assert (replayed["content"], replayed["msgId"]) == ("while away", first["msgId"])
            assert (await client.next_json())["type"] == "offline_complete"
            assert client.pings >= 1  # the replay window was confirmed by a pong

            await client.send_json({"conversationId": "", "recvId": "alice", "chatType": 2, "content": "hi",
                                    "contentType": 1})
            ack = await client.next_json()
            assert ack["type"] == "chat_ack"
            got = await recv_until(ws, lambda m: m.get("content") == "hi")
            assert got["msgId"] == ack["msgId"] and got["sendId"] == "bob"
            await send_json(ws, {"conversationId": "", "recvId": "bob", "chatType": 2, "content": "live",
                                 "contentType": 1})
            live = await client.next_json()
            assert live["content"] == "live"
            await client.until_pinged(client.pings + 1)  # the live delivery's confirmation ping, answered
        await client.stream.aclose()  # right after the pong was taken (its POST answered)
        await broker.broker.hub.wait_empty()

        again = await open_sse(broker, token=bob)
        assert (await again.next_json())["type"] == "connection_established"
        assert (await again.next_json())["type"] == "offline_complete"  # nothing delivered twice


async def test_a_batch_of_events_fanned_out_at_once_arrives_as_one_event_each(broker):
    with trio.fail_after(10):
        client = await open_sse(broker, token=DEMO_TOKEN)
        await client.next_json()
        await client.send_json({"type": "join_job", "jobId": "job-b"})
        assert (await client.next_json())["type"] == "joined"
        await broker.publish_events([JobEvent("job-b", "job_status", {"status": f"S{i}"}) for i in range(5)])
        received = [await client.next_json() for _ in range(5)]
        assert [(m["seq"], m["data"]["status"]) for m in received] == [(i + 1, f"S{i}") for i in range(5)]
