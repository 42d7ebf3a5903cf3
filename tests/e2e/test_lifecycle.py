"""Resume across disconnects and restarts, graceful drain, embedding."""


import pytest
import trio
import trio_websocket
from wsproto.events import CloseConnection

from broker import serve
from broker.client.broker_client import ClientClosed, ReconnectPolicy, open_client
from broker.protocols import CloseCode
from tests.support.helpers import DEMO_TOKEN, RawClient, expect_close, make_config, recv_json

FAST_RECONNECT = ReconnectPolicy(first_delay=0.05, max_delay=0.2, max_attempts=50)


class Seen:
    """The seqs a client yielded for one job, and a way to wait for the n-th."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self._grew = trio.Event()

    def add(self, seq: int) -> None:
        self.seqs.append(seq)
        self._grew.set()
        self._grew = trio.Event()

    async def wait_for(self, count: int) -> None:
        while len(self.seqs) < count:
            await self._grew.wait()


async def collect(client, job_id, count, seen: Seen):
    async for event in client:
        if event.get("type") in ("job_status", "stage_completed", "job_error") and event["data"]["jobId"] == job_id:
            seen.add(event["seq"])
            if len(seen.seqs) == count:
                return


async def test_client_sees_every_event_once_across_forced_disconnects(broker):
    seen = Seen()
    with trio.fail_after(20):
        async with open_client(broker.url(), DEMO_TOKEN, reconnect=FAST_RECONNECT, seed=1) as client:
            await client.join_job("job-x", last_seq=0)  # everything from the first event, whenever the join lands
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect, client, "job-x", 60, seen)
                for i in range(60):
                    await broker.publish("job-x", "job_status", {"status": f"S{i}"})
                    if i in (10, 25, 40):  # the server drops the client mid-stream: once caught up to here,
                        await seen.wait_for(i + 1)  # so that what follows is published while it reconnects
                        broker.broker.hub.evict_all(CloseCode.INTERNAL, "test: forced disconnect", "test")
    assert seen.seqs == list(range(1, 61))
    assert client.connects >= 4


async def test_client_sees_every_event_once_across_a_broker_restart(tmp_path):
    config = make_config(tmp_path)
    seen = Seen()
    with trio.fail_after(20):
        async with trio.open_nursery() as first_life:
            broker = await first_life.start(serve, config)
            for i in range(5):
                await broker.publish("job-rs", "job_status", {"status": f"A{i}"})
            async with open_client(broker.url(), DEMO_TOKEN, reconnect=FAST_RECONNECT, seed=2) as client:
                await client.join_job("job-rs", last_seq=0)
                async with trio.open_nursery() as watcher:
                    watcher.start_soon(collect, client, "job-rs", 15, seen)
                    await seen.wait_for(5)
                    await broker.shutdown()  # full stop: listeners, rooms, store
                    # a new broker process-equivalent on the same port and database
                    async with trio.open_nursery() as second_life:
                        broker2 = await second_life.start(serve, config.replace(server={"port": broker.port}))
                        for i in range(10):
                            await broker2.publish("job-rs", "job_status", {"status": f"B{i}"})
                        await seen.wait_for(15)
                        second_life.cancel_scope.cancel()
    assert seen.seqs == list(range(1, 16))
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
    """Draining: sessions get 1001, and until they have closed, health says 503 (here,
    on a keep-alive connection: the port stops accepting once the grace is over).
    Every bound is far longer than the test: the client decides when the drain ends."""
    broker = await nursery.start(serve, make_config(tmp_path, server={
        "drain_grace": 0, "close_timeout": 600, "drain_timeout": 600, "keepalive_timeout": 600}))
    with trio.fail_after(10):
        http = await trio.open_tcp_stream("127.0.0.1", broker.port)
        assert b" 200 " in await health_on(http)
        raw = RawClient(await trio.open_tcp_stream("127.0.0.1", broker.port))
        assert (await raw.handshake("/ws?token=demo-token"))[0] == 101
        assert (await raw.next_json())["type"] == "connection_established"
        broker.broker.request_shutdown()
        close = await raw.next_event()  # not answered yet: the drain waits for this session
        assert isinstance(close, CloseConnection) and close.code == 1001
        during = await health_on(http)
        assert b" 503 " in during and during.endswith(b'{"status": "draining"}')
        assert not broker.broker.stopped.is_set()
        await raw.stream.send_all(raw.ws.send(close.response()))  # the last session closes: drained
        await broker.broker.stopped.wait()
    try:
        await trio.open_tcp_stream("127.0.0.1", broker.port)
    except OSError:
        pass
    else:
        raise AssertionError("still listening after drain")


async def health_on(stream) -> bytes:
    """GET /health on an open keep-alive connection; the whole response."""
    await stream.send_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
    response = b""
    while b"\r\n\r\n" not in response or not response.endswith(b"}"):
        data = await stream.receive_some(65536)
        assert data, "connection closed"
        response += data
    return response


async def client_until_closed(url, codes, task_status=trio.TASK_STATUS_IGNORED):
    """A client that is started once established, then records the close code it gets."""
    async with trio_websocket.open_websocket_url(url + "?token=demo-token") as ws:
        assert (await recv_json(ws))["type"] == "connection_established"
        task_status.started()
        codes.append(await expect_close(ws))


async def test_cancelling_the_embedding_nursery_closes_clients_with_1001(tmp_path):
    config = make_config(tmp_path)
    codes = []
    with trio.fail_after(10):
        async with trio.open_nursery() as clients:  # outlives the broker's nursery
            async with trio.open_nursery() as broker_nursery:
                broker = await broker_nursery.start(serve, config)


                # returns once that client is established (not merely in the hub)
                await clients.start(client_until_closed, broker.url(), codes)
                await clients.start(client_until_closed, broker.url(), codes)
                broker_nursery.cancel_scope.cancel()
            assert broker.broker.stopped.is_set()
    assert codes == [1001, 1001]


async def test_cancelling_the_embedding_nursery_during_the_drain_grace_closes_clients_with_1001(tmp_path):
    # A drain has begun (long grace); cancelling the embedding nursery then must not wait
    # for the grace nor for the clients to leave: they get 1001 at once.
    config = make_config(tmp_path, server={"host": "127.0.0.1", "port": 0, "drain_grace": 600.0,
                                           "close_timeout": 2.0})
    codes = []
    with trio.fail_after(10):
        async with trio.open_nursery() as clients:
            async with trio.open_nursery() as broker_nursery:
                broker = await broker_nursery.start(serve, config)


                await clients.start(client_until_closed, broker.url(), codes)
                broker.broker.request_shutdown()
                while not broker.broker.draining:
                    await trio.sleep(0)  # the drain has started: the broker is in its grace period
                broker_nursery.cancel_scope.cancel()
            assert broker.broker.stopped.is_set()
    assert codes == [1001]


async def test_embedding_publish_and_ports(broker):
    assert broker.ports == [broker.port] and broker.url().startswith("ws://127.0.0.1:")
    assert await broker.publish("job-e", "job_status", {"status": "A"}) == 1
    assert await broker.publish("job-e", "job_status", {"status": "B"}) == 2


async def test_embedding_groups_and_the_deprecated_chat_name(broker):
    members = await broker.groups.create_group("crew", ["ann", "bob"])
    assert sorted(members) == ["ann", "bob"]
    with pytest.warns(DeprecationWarning, match="use BrokerHandle.groups"):
        old_name = broker.chat
    assert old_name is broker.groups
    assert sorted((await old_name.group("crew"))["members"]) == ["ann", "bob"]
