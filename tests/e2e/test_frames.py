"""Frame-level behaviour of the real broker: control-frame floods, protocol violations,
subprotocols. Real broker on a loopback port, raw wsproto clients where the test
breaks the rules, trio-websocket clients for the well-behaved ones."""

import json

import pytest
import trio
import trio_websocket
from wsproto.events import AcceptConnection, CloseConnection, Pong, Request

from broker import serve
from tests.support.clients import client_frame
from tests.support.helpers import RawClient, make_config, recv_json, recv_until, send_json


async def raw_client(broker, target):
    client = RawClient(await trio.open_tcp_stream("127.0.0.1", broker.port), answer_pings=False)
    assert (await client.handshake(target))[0] == 101
    return client


async def subscriber(nursery, broker, job_id):
    """A healthy trio-websocket subscriber joined to ``job_id``; returns its receive channel."""
    send, receive = trio.open_memory_channel(100)
    joined = trio.Event()

    async def run():
        async with trio_websocket.open_websocket_url(broker.url() + "?token=demo-token") as ws:
            await recv_json(ws)
            await send_json(ws, {"type": "join_job", "jobId": job_id})
            await recv_until(ws, lambda m: m["type"] == "joined")
            joined.set()
            while True:
                message = json.loads(await ws.get_message())
                if message.get("type") == "job_status":
                    await send.send(message)

    nursery.start_soon(run)
    with trio.fail_after(5):
        await joined.wait()
    return receive


async def flood(client: RawClient, frame: bytes) -> None:
    """Send ``frame`` as fast as the socket takes it until the broker closes."""
    batch = frame * 2000
    try:
        while True:
            await client.stream.send_all(batch)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def close_after_errors(client: RawClient) -> tuple[int, list[str]]:
    """Read until the close frame: its code and the error codes seen before it."""
    errors = []
    with trio.fail_after(10):
        while True:
            event = await client.next_event()
            if isinstance(event, CloseConnection):
                return event.code, errors
            message = json.loads(event.data)
            if message.get("type") == "error":
                errors.append(message["code"])


@pytest.mark.parametrize("target", ["/ws?token=demo-token", "/ws"], ids=["authenticated", "unauthenticated"])
async def test_a_pong_flood_is_cut_off_with_4008_while_others_get_deliveries(broker, nursery, target):
    deliveries = await subscriber(nursery, broker, "job-flood")
    flooder = await raw_client(broker, target)
    async with trio.open_nursery() as flooding:
        flooding.start_soon(flood, flooder, flooder.ws.send(Pong(payload=b"")))
        await broker.publish("job-flood", "job_status", {"status": "RUNNING"})
        with trio.fail_after(5):
            assert (await deliveries.receive())["data"]["status"] == "RUNNING"
        code, errors = await close_after_errors(flooder)
        flooding.cancel_scope.cancel()
    assert code == 4008 and "RATE_LIMITED" in errors
    await broker.publish("job-flood", "job_status", {"status": "DONE"})
    with trio.fail_after(5):
        assert (await deliveries.receive())["data"]["status"] == "DONE"


async def test_deliveries_go_on_during_a_flood_the_budget_allows(tmp_path, nursery):
    config = make_config(tmp_path, limits={"message_rate": 1e9, "message_burst": 10**9})
    broker = await nursery.start(serve, config)
    deliveries = await subscriber(nursery, broker, "job-busy")
    flooder = await raw_client(broker, "/ws?token=demo-token")
    assert (await flooder.next_json())["type"] == "connection_established"
    async with trio.open_nursery() as flooding:
        flooding.start_soon(flood, flooder, flooder.ws.send(Pong(payload=b"")))
        for i in range(5):  # the flooder's reader yields: the room's deliveries keep flowing
            await broker.publish("job-busy", "job_status", {"status": f"S{i}"})
            with trio.fail_after(5):
                assert (await deliveries.receive())["data"]["status"] == f"S{i}"
        flooding.cancel_scope.cancel()


@pytest.mark.parametrize(("frame", "code"), [
    (client_frame(0x1, b'{"type":"ping"}', mask=False), 1002),
    (client_frame(0x5, b"x"), 1002),
    (client_frame(0xA, b"pong", fin=False), 1002),
    (client_frame(0x1, b'{"type":"\xc3\x28"}'), 1007),
])
async def test_protocol_violations_close_with_1002_or_1007_not_a_dropped_socket(broker, frame, code):
    client = await raw_client(broker, "/ws?token=demo-token")
    assert (await client.next_json())["type"] == "connection_established"
    await client.stream.send_all(frame)
    with trio.fail_after(5):
        event = await client.next_event()
    assert isinstance(event, CloseConnection) and event.code == code


async def test_configured_subprotocol_is_chosen(tmp_path, nursery):
    broker = await nursery.start(serve, make_config(tmp_path, websocket={"subprotocols": ("broker.v2", "broker.v1")}))
    url = broker.url() + "?token=demo-token"
    async with trio_websocket.open_websocket_url(url, subprotocols=["other", "broker.v1", "broker.v2"]) as ws:
        assert ws.subprotocol == "broker.v1"  # the client's order of preference
        assert (await recv_json(ws))["type"] == "connection_established"
    async with trio_websocket.open_websocket_url(url, subprotocols=["other"]) as ws:
        assert ws.subprotocol is None
    async with trio_websocket.open_websocket_url(url) as ws:
        assert ws.subprotocol is None and (await recv_json(ws))["type"] == "connection_established"


async def test_the_auth_frame_may_follow_the_request_before_the_101(broker):
    """Bytes sent right behind the request head reach the session (they are not lost
    with the HTTP front end's buffer)."""
    stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
    client = RawClient(stream)
    request = client.ws.send(Request(host="test", target="/ws"))
    await stream.send_all(request + client_frame(0x1, b'{"type":"auth","token":"demo-token"}'))
    with trio.fail_after(5):
        assert isinstance(await client.next_event(), AcceptConnection)
        assert (await client.next_json())["type"] == "connection_established"
