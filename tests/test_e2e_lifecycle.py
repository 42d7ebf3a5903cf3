"""Resume across disconnects and restarts, graceful drain, embedding."""

import json

import trio
import trio_websocket

from broker import serve
from broker.client import ClientClosed, ReconnectPolicy, open_client
from broker.httpclient import http_request
from broker.protocols import CloseCode

from .helpers import DEMO_TOKEN, expect_close, make_config, recv_json

FAST_RECONNECT = ReconnectPolicy(first_delay=0.05, max_delay=0.2, max_attempts=50)


async def collect(client, job_id, count, into):
    async for event in client:
        if event.get("type") in ("job_status", "stage_completed", "job_error") and event["data"]["jobId"] == job_id:
            into.append(event["seq"])
            if len(into) == count:
                return


async def test_client_sees_every_event_once_across_forced_disconnects(broker):
    seen: list[int] = []
    async with open_client(broker.url(), DEMO_TOKEN, reconnect=FAST_RECONNECT, seed=1) as client:
        await client.join_job("job-x")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, client, "job-x", 60, seen)
            await client.connected.wait()
            for i in range(60):
                await broker.publish("job-x", "job_status", {"status": f"S{i}"})
                if i in (10, 25, 40):  # the server drops the client mid-stream
                    broker.broker.hub.evict_all(CloseCode.INTERNAL, "test: forced disconnect", "test")
                await trio.sleep(0.005)
    assert seen == list(range(1, 61))
    assert client.connects >= 4


async def test_client_sees_every_event_once_across_a_broker_restart(tmp_path):
    config = make_config(tmp_path)
    seen: list[int] = []
    async with trio.open_nursery() as first_life:
        broker = await first_life.start(serve, config)
        for i in range(5):
            await broker.publish("job-rs", "job_status", {"status": f"A{i}"})
        async with open_client(broker.url(), DEMO_TOKEN, reconnect=FAST_RECONNECT, seed=2) as client:
            await client.join_job("job-rs", last_seq=0)
            async with trio.open_nursery() as watcher:
                watcher.start_soon(collect, client, "job-rs", 15, seen)
                with trio.fail_after(10):
                    while len(seen) < 5:
                        await trio.sleep(0.01)
                await broker.shutdown()  # full stop: listeners, rooms, store
                # a new broker process-equivalent on the same port and database
                async with trio.open_nursery() as second_life:
                    broker2 = await second_life.start(serve, config.replace(server={"port": broker.port}))
                    for i in range(10):
                        await broker2.publish("job-rs", "job_status", {"status": f"B{i}"})
                    with trio.fail_after(10):
                        while len(seen) < 15:
                            await trio.sleep(0.01)
                    second_life.cancel_scope.cancel()
    assert seen == list(range(1, 16))
    assert client.connects == 2


async def test_client_stops_on_1008(broker):
    async with open_client(broker.url(), "wrong-token", reconnect=FAST_RECONNECT) as client:
        events = []
        try:
            async for event in client:
                events.append(event)
        except ClientClosed as exc:
            assert exc.code == 1008
        else:
            raise AssertionError("no ClientClosed")
    assert events[0]["code"] == "UNAUTHORIZED" and client.connects == 0


async def test_client_gives_up_after_max_attempts(autojump_clock):
    policy = ReconnectPolicy(first_delay=3, max_attempts=5)
    async with open_client("ws://127.0.0.1:9/ws", DEMO_TOKEN, reconnect=policy, seed=3) as client:
        try:
            await client.next_event()
        except ClientClosed as exc:
            assert "gave up after 5 attempts" in str(exc)
    # delays 3, 6, 12, 24, 48 s, each stretched by up to 50 % jitter
    assert 93 <= trio.current_time() <= 93 * 1.5


def test_backoff_is_exponential_with_bounded_jitter():
    import random

    policy = ReconnectPolicy()
    rng = random.Random(0)
    delays = [policy.delay(attempt, rng) for attempt in range(1, 6)]
    for attempt, delay in enumerate(delays, start=1):
        base = 3 * 2 ** (attempt - 1)
        assert base <= delay <= base * 1.5
    assert ReconnectPolicy(max_delay=10).delay(10, rng) <= 15


async def test_graceful_shutdown_health_503_then_1001(tmp_path, nursery):
    broker = await nursery.start(serve, make_config(tmp_path, server={"drain_grace": 0.5}))
    health_url = f"http://127.0.0.1:{broker.port}/health"
    async with trio_websocket.open_websocket_url(broker.url() + "?token=demo-token") as ws:
        await recv_json(ws)
        await broker.publish("job-d", "job_status", {"status": "RUNNING"})
        broker.broker.request_shutdown()
        await trio.sleep(0.1)
        during = await http_request("GET", health_url)
        assert during.status == 503 and json.loads(during.body) == {"status": "draining"}
        assert await expect_close(ws) == 1001
    await broker.broker.stopped.wait()
    try:
        await trio.open_tcp_stream("127.0.0.1", broker.port)
    except OSError:
        pass
    else:
        raise AssertionError("still listening after drain")


async def test_cancelling_the_embedding_nursery_closes_clients_with_1001(tmp_path):
    config = make_config(tmp_path)
    codes = []
    with trio.fail_after(10):
        async with trio.open_nursery() as clients:  # outlives the broker's nursery
            async with trio.open_nursery() as broker_nursery:
                broker = await broker_nursery.start(serve, config)

                async def client():
                    async with trio_websocket.open_websocket_url(broker.url() + "?token=demo-token") as ws:
                        await recv_json(ws)
                        codes.append(await expect_close(ws))

                clients.start_soon(client)
                clients.start_soon(client)
                while len(broker.broker.hub) < 2:
                    await trio.sleep(0.01)
                broker_nursery.cancel_scope.cancel()
            assert broker.broker.stopped.is_set()
    assert codes == [1001, 1001]


async def test_embedding_publish_and_ports(broker):
    assert broker.ports == [broker.port] and broker.url().startswith("ws://127.0.0.1:")
    assert await broker.publish("job-e", "job_status", {"status": "A"}) == 1
    assert await broker.publish("job-e", "job_status", {"status": "B"}) == 2
