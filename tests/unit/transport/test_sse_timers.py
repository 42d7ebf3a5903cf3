"""The SSE transport's timers and bounds, exact in virtual time (autojump_clock), through
the real HTTP front over in-memory streams: heartbeat comments and their pongs, the
idle timeout, the slow-consumer bound (4003), the rate limit (4008)."""

import json

import trio
import trio.testing

from tests.support.sse_client import SseTestClient
from tests.support.virtual import broker_event, virtual_broker


async def open_sse(nursery, broker, token="demo-token", answer_pings=True, pair=trio.testing.memory_stream_pair):
    """A stream through the real front over an in-memory connection; POSTs on new ones."""
    front = broker.http_front()

    async def connect(make=trio.testing.memory_stream_pair):
        server_end, client_end = make()
        nursery.start_soon(front.handle_tcp, server_end)
        return client_end

    before = set(broker.hub.sessions())
    client = SseTestClient(await connect(pair), connect, answer_pings=answer_pings)
    client.token = token
    headers = [("Authorization", f"Bearer {token}")] if token else []
    assert (await client.open(headers=headers))[0] == 200
    (session,) = set(broker.hub.sessions()) - before
    return session, client


async def test_heartbeat_comment_each_interval_and_no_pong_closes_4002_exactly(tmp_path, autojump_clock):
    async with virtual_broker(tmp_path) as broker, trio.open_nursery() as nursery:
        start = trio.current_time()
        session, client = await open_sse(nursery, broker, answer_pings=False)
        assert (await client.next_json())["type"] == "connection_established"
        assert session.transport == "sse"
        code, reason = await client.expect_close()
        assert (code, reason) == (4002, "heartbeat timeout")
        assert trio.current_time() - start == 30 + 30  # ping comment at 30 s, no pong by 60 s
        assert client.pings == 1


async def test_answered_pings_keep_the_stream(tmp_path, autojump_clock):
    async with virtual_broker(tmp_path, websocket={"idle_timeout": 10_000}) as broker, \
            trio.open_nursery() as nursery:
        session, client = await open_sse(nursery, broker)
        assert (await client.next_json())["type"] == "connection_established"
        reader = trio.CancelScope()

        async def read_forever():
            with reader:
                while True:
                    await client.next_event()

        nursery.start_soon(read_forever)
        await trio.sleep(301)
        assert client.pings == 10 and not session.closed  # one comment every 30 s, each answered
        reader.cancel()
        session.evict(1000, "test over", "test")


async def test_idle_timeout_closes_1000_exactly(tmp_path, autojump_clock):
    async with virtual_broker(tmp_path, websocket={"heartbeat_interval": 10_000}) as broker, \
            trio.open_nursery() as nursery:
        start = trio.current_time()
        _, client = await open_sse(nursery, broker)
        assert (await client.next_json())["type"] == "connection_established"
        await trio.sleep(200)
        await client.send_json({"type": "ping"})  # activity: the 600 s start again
        assert (await client.next_json())["type"] == "pong"
        assert await client.expect_close() == (1000, "idle timeout")
        assert trio.current_time() - start == 200 + 600


async def test_no_auth_within_the_timeout_is_unauthorized_then_1008(tmp_path, autojump_clock):
    async with virtual_broker(tmp_path) as broker, trio.open_nursery() as nursery:
        start = trio.current_time()
        _, client = await open_sse(nursery, broker, token=None)
        assert (await client.next_json())["code"] == "UNAUTHORIZED"
        assert await client.expect_close() == (1008, "authentication failed")
        assert trio.current_time() - start == 10


async def test_slow_consumer_gets_its_backlog_then_a_close_event_naming_4003(tmp_path, autojump_clock):
    async with virtual_broker(tmp_path, websocket={"outbox_max_bytes": 8192}) as broker, \
            trio.open_nursery() as nursery:
        # lockstep: a write completes only as the client reads, like a full TCP window
        session, client = await open_sse(nursery, broker, pair=trio.testing.lockstep_stream_pair)
        assert (await client.next_json())["type"] == "connection_established"
        await client.send_json({"type": "join_job", "jobId": "job-1"})
        assert (await client.next_json())["type"] == "joined"
        published = 0
        while session.close_code is None:  # the client is not reading now
            await broker.job_rooms.publish_many([broker_event("job-1", published)])
            published += 1
        received = []
        while True:
            event = await client.next_event()
            if event.name == "close":
                close = json.loads(event.data)
                assert close["code"] == 4003 and "slow consumer" in close["reason"]
                break
            received.append(event)
        assert 0 < len(received) < published  # what was queued arrived, the rest was not queued
        seqs = [json.loads(event.data)["seq"] for event in received]
        assert seqs == list(range(1, len(received) + 1))  # in order, no gap: resume with lastSeq


async def test_post_flood_is_rate_limited_then_closed_4008(tmp_path, autojump_clock):
    limits = {"message_rate": 1.0, "message_burst": 2, "rate_limit_strikes": 3, "rate_limit_window": 60.0}
    async with virtual_broker(tmp_path, limits=limits) as broker, trio.open_nursery() as nursery:
        _, client = await open_sse(nursery, broker)
        assert (await client.next_json())["type"] == "connection_established"
        for _ in range(2):
            await client.send_json({"type": "ping"})
            assert (await client.next_json())["type"] == "pong"
        statuses = []
        for _ in range(3):
            statuses.append((await client.post(b'{"type":"ping"}'))[0])
            assert (await client.next_json())["code"] == "RATE_LIMITED"
        assert statuses == [204, 204, 204]  # taken; the answer is the protocol's, on the stream
        assert await client.expect_close() == (4008, "rate limit exceeded repeatedly")
        assert (await client.post(b'{"type":"ping"}'))[0] == 404
