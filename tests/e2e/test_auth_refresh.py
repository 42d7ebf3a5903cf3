"""Expiry and refresh end to end, over loopback with real clients: the Python client
renews its token in-band and reconnects with a fresh one after 4005; proxy routes close
4005 too. Tokens here live a few real seconds (``jwt_leeway = 0``); every wait is for
an event, under ``fail_after``."""


import attrs
import pytest
import trio
import trio_websocket

from broker import serve
from broker.auth.tokens import issue_token
from broker.client.broker_client import ClientClosed, ReconnectPolicy, open_client
from broker.config.loader import ProxyRoute
from tests.support.helpers import JWT_SECRET, ROOT, expect_close, make_config, recv_until

SHORT = {"jwt_secret": JWT_SECRET, "jwt_leeway": 0.0, "refresh_before": 60.0}

pytestmark = pytest.mark.slow  # tokens expire on the real clock: seconds per test


def short_config(tmp_path, **sections):
    return make_config(tmp_path, auth=SHORT, **sections)


async def next_matching(client, predicate):
    while True:
        event = await client.next_event()
        if predicate(event):
            return event


async def test_the_python_client_refreshes_in_band_and_keeps_its_connection(tmp_path, nursery):
    broker = await nursery.start(serve, short_config(tmp_path))
    issued = []

    async def get_token():
        issued.append(issue_token(JWT_SECRET, "alice", 3, {"jobs": ["job-1"]}))
        return issued[-1]

    async with open_client(broker.url(), get_token=get_token) as client:
        await client.join_job("job-1")
        with trio.fail_after(20):
            await next_matching(client, lambda e: e.get("type") == "joined")
            for refreshed in range(1, 4):  # each token lives 2-3 s: warned halfway, renewed in-band
                await next_matching(client, lambda e: e.get("type") == "token_refreshed")
                assert client.refreshes == refreshed
            await broker.publish("job-1", "job_status", {"status": "still here"})
            event = await next_matching(client, lambda e: e.get("type") == "job_status")
        assert event["data"]["status"] == "still here"
        assert client.connects == 1 and len(issued) >= 4


async def test_after_4005_the_python_client_reconnects_with_a_fresh_token(tmp_path, nursery):
    broker = await nursery.start(serve, short_config(tmp_path))
    calls = 0

    async def get_token():
        nonlocal calls
        calls += 1
        if calls == 2:  # the in-band refresh gets a token the broker refuses: the old one runs out
            return issue_token("another-secret-0123456789-0123456789", "alice", 60)
        return issue_token(JWT_SECRET, "alice", 3 if calls == 1 else 600, {"jobs": ["job-1"]})

    async with open_client(broker.url(), get_token=get_token) as client:
        await client.join_job("job-1")
        with trio.fail_after(20):
            refused = await next_matching(client, lambda e: e.get("type") == "error")
            assert refused["code"] == "UNAUTHORIZED"
            expired = await next_matching(client, lambda e: e.get("type") == "error")
            assert expired["code"] == "TOKEN_EXPIRED"
            await next_matching(client, lambda e: e.get("type") == "joined")  # rejoined after the reconnect
            assert client.connects == 2 and calls == 3
            await broker.publish("job-1", "job_status", {"status": "after"})
            assert (await next_matching(client, lambda e: "seq" in e))["data"]["status"] == "after"


async def test_without_get_token_4005_stops_the_python_client(tmp_path, nursery):
    broker = await nursery.start(serve, short_config(tmp_path))
    token = issue_token(JWT_SECRET, "bob", 2)
    async with open_client(broker.url(), token, reconnect=ReconnectPolicy(first_delay=0.01)) as client:
        with trio.fail_after(20), pytest.raises(ClientClosed) as closed:
            while True:
                await client.next_event()
        assert closed.value.code == 4005 and client.connects == 1


async def test_a_proxy_route_closes_4005_when_the_token_expires(tmp_path, nursery):
    async def echo(request):
        ws = await request.accept()
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except trio_websocket.ConnectionClosed:
            pass

    upstream = await nursery.start(trio_websocket.serve_websocket, echo, "127.0.0.1", 0, None)
    route = ProxyRoute(path="/realtime", upstream=f"ws://127.0.0.1:{upstream.port}/v1", connect_timeout=2.0)
    broker = await nursery.start(serve, attrs.evolve(short_config(tmp_path), proxy=(route,)))
    token = issue_token(JWT_SECRET, "carol", 3)
    ws = await trio_websocket.connect_websocket_url(nursery, broker.url("/realtime"),
                                                    extra_headers=[("Authorization", f"Bearer {token}")])
    await ws.send_message("hello")
    assert await ws.get_message() == "hello"
    with trio.fail_after(20):
        error = await recv_until(ws, lambda m: m.get("type") == "error", timeout=20)
    assert error["code"] == "TOKEN_EXPIRED"
    assert await expect_close(ws) == 4005
    assert ws.closed.reason == "token expired: get a new token, then reconnect"


def test_the_close_tables_know_4005():
    from broker.client.broker_client import FINAL_CLOSE_CODES, TOKEN_EXPIRED
    from broker.protocols import CloseCode, ErrorCode
    from broker.tools.doctor import close_meaning  # `broker client` and `broker doctor` explain closes with it

    assert CloseCode.TOKEN_EXPIRED == TOKEN_EXPIRED == 4005 and ErrorCode.TOKEN_EXPIRED.value == "TOKEN_EXPIRED"
    assert close_meaning(4005) == "token expired: get a new token, then reconnect"
    assert 4005 not in FINAL_CLOSE_CODES  # with get_token it reconnects at once; without, it stops
    protocol = (ROOT / "docs" / "PROTOCOL.md").read_text()
    assert "| 4005 |" in protocol and "`TOKEN_EXPIRED`" in protocol


async def test_the_sse_fallback_warns_refreshes_and_closes_4005_too(tmp_path, nursery):
    from tests.support.sse_client import SseTestClient

    broker = await nursery.start(serve, short_config(tmp_path))

    async def connect():
        return await trio.open_tcp_stream("127.0.0.1", broker.port)

    client = SseTestClient(await connect(), connect)
    client.token = issue_token(JWT_SECRET, "dora", 3)
    with trio.fail_after(20):
        status, _ = await client.open(headers=[("Authorization", f"Bearer {client.token}")])
        assert status == 200
        assert (await client.next_json())["type"] == "connection_established"
        assert (await client.next_json())["type"] == "offline_complete"
        assert (await client.next_json())["type"] == "token_expiring"
        client.token = issue_token(JWT_SECRET, "dora", 4)  # the POSTs carry the new token from now on
        await client.send_json({"type": "auth", "token": client.token})
        assert (await client.next_json())["type"] == "token_refreshed"
        assert (await client.next_json())["type"] == "token_expiring"  # no second refresh this time
        error = await client.next_json()
        assert error["code"] == "TOKEN_EXPIRED"
        assert await client.expect_close() == (4005, "token expired: get a new token, then reconnect")
