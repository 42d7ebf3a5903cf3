"""Authenticating proxy routes, end to end, against a fake upstream realtime server."""

import logging
import os

import attrs
import pytest
import trio
import trio.testing
import trio_websocket

from broker import serve
from broker.config.loader import ConfigError, ProxyRoute
from broker.proxy.route import resolve_headers
from tests.support.helpers import RawClient, expect_close, make_config, recv_json

UPSTREAM_KEY = "sk-upstream-secret-key-0123456789"


@attrs.define
class FakeUpstream:
    """A realtime API stand-in: records handshakes, echoes, or obeys commands."""

    reject_with: int | None = None
    subprotocol: str | None = None
    handshakes: list = attrs.field(factory=list)
    received: list = attrs.field(factory=list)
    closes: list = attrs.field(factory=list)
    connections: list = attrs.field(factory=list)
    open_now: int = 0
    port: int = 0
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def _note_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, condition) -> None:
        """Wait for ``condition()`` to hold after a handshake, a close or a session's end."""
        while not condition():
            await self._changed.wait()

    async def handler(self, request):
        self.handshakes.append({"path": request.path, "headers": dict(request.headers),
                                "subprotocols": request.proposed_subprotocols})
        if self.reject_with is not None:
            await request.reject(self.reject_with, body=b"invalid api key")
            return
        chosen = self.subprotocol if self.subprotocol in request.proposed_subprotocols else None
        ws = await request.accept(subprotocol=chosen)
        self.connections.append(ws)
        self.open_now += 1
        try:
            while True:
                message = await ws.get_message()
                self.received.append(message)
                if message == "please close 4500":
                    await ws.aclose(4500, "upstream says bye")
                    return
                if message == "send burst":
                    await ws.send_message(message)
                    for i in range(100):
                        await ws.send_message(bytes([i % 256]) * 32768)
                        await ws.send_message(f"down-{i}")
                    continue
                await ws.send_message(message)  # echo
        except trio_websocket.ConnectionClosed as exc:
            self.closes.append(exc.reason.code)
        finally:
            self.open_now -= 1
            self._note_change()


@pytest.fixture
async def upstream(nursery):
    fake = FakeUpstream()
    server = await nursery.start(trio_websocket.serve_websocket, fake.handler, "127.0.0.1", 0, None)
    fake.port = server.port
    return fake


def route(upstream, **overrides):
    base = ProxyRoute(path="/api/ws-proxy", upstream=f"ws://127.0.0.1:{upstream.port}/v1/realtime",
                      headers={"Authorization": "Bearer {env:TEST_UPSTREAM_KEY}", "OpenAI-Beta": "realtime=v1"},
                      forward_query=("model",), connect_timeout=2.0)
    return attrs.evolve(base, **overrides)


@pytest.fixture(autouse=True)
def upstream_key(monkeypatch):
    monkeypatch.setenv("TEST_UPSTREAM_KEY", UPSTREAM_KEY)


async def start_broker(nursery, tmp_path, *routes, **sections):
    config = make_config(tmp_path, **sections)
    return await nursery.start(serve, attrs.evolve(config, proxy=tuple(routes)))


def proxy_url(broker, query="token=demo-token"):
    return f"ws://127.0.0.1:{broker.port}/api/ws-proxy?{query}"


async def test_relay_adds_the_bearer_the_client_never_sees_it_nor_the_logs(nursery, tmp_path, upstream, caplog):
    caplog.set_level(logging.DEBUG)
    broker = await start_broker(nursery, tmp_path, route(upstream))
    async with trio_websocket.open_websocket_url(proxy_url(broker, "token=demo-token&model=gpt-rt&secret=x")) as ws:
        await ws.send_message("hello upstream")
        assert await ws.get_message() == "hello upstream"
        handshake = upstream.handshakes[0]
        assert handshake["headers"][b"authorization"] == f"Bearer {UPSTREAM_KEY}".encode()
        assert handshake["headers"][b"openai-beta"] == b"realtime=v1"
        assert handshake["path"] == "/v1/realtime?model=gpt-rt"  # only allowed query parameters
        assert UPSTREAM_KEY.encode() not in str(ws.handshake_headers).encode()
    assert UPSTREAM_KEY not in caplog.text and "demo-token" not in caplog.text
    metrics = broker.metrics.render().decode()
    assert 'broker_proxy_frames_total{direction="upstream",route="/api/ws-proxy"} 1.0' in metrics


async def test_large_binary_and_text_frames_intact_and_in_order_both_ways(nursery, tmp_path, upstream):
    broker = await start_broker(nursery, tmp_path, route(upstream))
    async with trio_websocket.open_websocket_url(proxy_url(broker)) as ws:
        sent = []
        for i in range(100):
            sent += [bytes([(i * 7) % 256]) * 32768, f"up-{i}"]
        async with trio.open_nursery() as both:
            async def send_all():
                for message in sent:
                    await ws.send_message(message)
            both.start_soon(send_all)
            echoed = [await ws.get_message() for _ in range(len(sent))]
        assert echoed == sent
        assert upstream.received == sent
        await ws.send_message("send burst")
        assert await ws.get_message() == "send burst"
        burst = [await ws.get_message() for _ in range(200)]
        expected = []
        for i in range(100):
            expected += [bytes([i % 256]) * 32768, f"down-{i}"]
        assert burst == expected


async def test_client_close_code_is_mirrored_upstream(nursery, tmp_path, upstream):
    broker = await start_broker(nursery, tmp_path, route(upstream))
    async with trio_websocket.open_websocket_url(proxy_url(broker)) as ws:
        await ws.send_message("x")
        await ws.get_message()
        await ws.aclose(4321, "client done")
    with trio.fail_after(5):
        await upstream.wait_until(lambda: upstream.closes)
    assert upstream.closes == [4321]


async def test_upstream_close_code_is_mirrored_to_the_client(nursery, tmp_path, upstream):
    broker = await start_broker(nursery, tmp_path, route(upstream))
    async with trio_websocket.open_websocket_url(proxy_url(broker)) as ws:
        await ws.send_message("please close 4500")
        with pytest.raises(trio_websocket.ConnectionClosed) as info:
            with trio.fail_after(3):
                await ws.get_message()
        assert info.value.reason.code == 4500 and info.value.reason.reason == "upstream says bye"


async def test_upstream_down_gives_4004_without_waiting_for_the_connect_timeout(nursery, tmp_path, upstream):
    dead = attrs.evolve(route(upstream), upstream="ws://127.0.0.1:9/v1/realtime", connect_timeout=600.0)
    broker = await start_broker(nursery, tmp_path, dead)
    with trio.fail_after(10):  # far below the connect timeout: the refusal itself ends the attempt
        async with trio_websocket.open_websocket_url(proxy_url(broker)) as ws:
            error = await recv_json(ws)
            assert error["type"] == "error" and error["code"] == "UPSTREAM_UNAVAILABLE"
            assert "unreachable" in error["message"]
            assert await expect_close(ws) == 4004


async def test_upstream_refusing_gives_4004_with_its_status(nursery, tmp_path, upstream):
    upstream.reject_with = 401
    broker = await start_broker(nursery, tmp_path, route(upstream))
    async with trio_websocket.open_websocket_url(proxy_url(broker)) as ws:
        error = await recv_json(ws)
        assert error["code"] == "UPSTREAM_UNAVAILABLE" and error["status"] == 401 and "HTTP 401" in error["message"]
        assert await expect_close(ws) == 4004


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def task_count():
    def count(task):
        return 1 + sum(count(child) for nursery in task.child_nurseries for child in nursery.child_tasks)
    return count(trio.lowlevel.current_root_task())


async def test_vanished_client_tears_down_the_upstream_leg_and_leaks_nothing(nursery, tmp_path, upstream):
    """The peer's reset ends the session at once (close_timeout is far longer than the
    test), the upstream gets 1001, and no socket or task is left behind."""
    broker = await start_broker(nursery, tmp_path, route(upstream), server={"close_timeout": 600.0})
    await trio.testing.wait_all_tasks_blocked()  # the broker has settled: a baseline to compare with
    fds_before, tasks_before = open_fds(), task_count()
    stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
    client = RawClient(stream)
    assert (await client.handshake("/api/ws-proxy?token=demo-token"))[0] == 101
    await client.send_text("ping through")
    await client.next_event()
    assert upstream.open_now == 1 and len(broker.broker.hub) == 1
    stream.socket.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    await stream.aclose()  # RST: no close frame, the client just disappears
    with trio.fail_after(10):
        await upstream.wait_until(lambda: upstream.open_now == 0)
        await broker.broker.hub.wait_empty()
    assert upstream.closes == [1001]
    await trio.testing.wait_all_tasks_blocked()  # the sessions' last closes have run
    assert open_fds() == fds_before, "a socket was left open"
    assert task_count() == tasks_before, "a task was left running"
    metrics = broker.metrics.render().decode()
    assert 'broker_proxy_sessions_open{route="/api/ws-proxy"} 0.0' in metrics


async def test_bad_token_never_reaches_upstream(nursery, tmp_path, upstream):
    broker = await start_broker(nursery, tmp_path, route(upstream))
    async with trio_websocket.open_websocket_url(proxy_url(broker, "token=wrong")) as ws:
        assert (await recv_json(ws))["code"] == "UNAUTHORIZED"
        assert await expect_close(ws) == 1008
    assert upstream.handshakes == []


async def test_auth_frame_then_relay(nursery, tmp_path, upstream):
    broker = await start_broker(nursery, tmp_path, route(upstream))
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{broker.port}/api/ws-proxy") as ws:
        await ws.send_message('{"type":"auth","token":"demo-token"}')
        await ws.send_message("after auth")
        assert await ws.get_message() == "after auth"


async def test_subprotocol_pass_through(nursery, tmp_path, upstream):
    upstream.subprotocol = "realtime"
    broker = await start_broker(nursery, tmp_path, route(upstream, forward_subprotocols=("realtime",)))
    async with trio_websocket.open_websocket_url(proxy_url(broker), subprotocols=["realtime", "other"]) as ws:
        assert ws.subprotocol == "realtime"
    assert upstream.handshakes[0]["subprotocols"] == ("realtime",)


async def test_client_api_key_compatibility_mode(nursery, tmp_path, upstream, caplog):
    caplog.set_level(logging.DEBUG)
    broker = await start_broker(nursery, tmp_path, route(upstream),
                                route(upstream, path="/legacy", allow_client_api_key=True))
    async with trio_websocket.open_websocket_url(proxy_url(broker, "token=demo-token&apiKey=sk-client-key-999")) as ws:
        await ws.send_message("a")
        await ws.get_message()
    assert upstream.handshakes[-1]["headers"][b"authorization"] == f"Bearer {UPSTREAM_KEY}".encode()
    url = f"ws://127.0.0.1:{broker.port}/legacy?token=demo-token&apiKey=sk-client-key-999"
    async with trio_websocket.open_websocket_url(url) as ws:
        await ws.send_message("b")
        await ws.get_message()
    assert upstream.handshakes[-1]["headers"][b"authorization"] == b"Bearer sk-client-key-999"
    assert "apiKey" not in upstream.handshakes[-1]["path"]
    assert "sk-client-key-999" not in caplog.text


async def test_per_user_session_limit(nursery, tmp_path, upstream):
    broker = await start_broker(nursery, tmp_path, route(upstream, max_sessions_per_user=1))
    async with trio_websocket.open_websocket_url(proxy_url(broker)) as first:
        await first.send_message("x")
        await first.get_message()
        async with trio_websocket.open_websocket_url(proxy_url(broker)) as second:
            refused = await recv_json(second)
            assert refused["code"] == "RATE_LIMITED"
            assert await expect_close(second) == 1008


def test_header_templates(tmp_path):
    key_file = tmp_path / "key.txt"
    key_file.write_text("from-file\n")
    r = ProxyRoute(path="/p", upstream="ws://x", headers={"A": "Bearer {env:K}", "B": f"{{file:{key_file}}}", "C": "lit"})
    assert resolve_headers(r, {"K": "v"}) == [(b"A", b"Bearer v"), (b"B", b"from-file"), (b"C", b"lit")]
    with pytest.raises(ConfigError, match="environment variable K is not set"):
        resolve_headers(r, {})


async def test_a_broadcast_chat_never_reaches_a_proxy_client(nursery, tmp_path, upstream):
    from broker.auth.tokens import issue_token
    from tests.support.helpers import JWT_SECRET, recv_until, send_json

    broker = await start_broker(nursery, tmp_path, route(upstream))
    async with trio_websocket.open_websocket_url(proxy_url(broker)) as relayed:
        await relayed.send_message("relaying")
        assert await relayed.get_message() == "relaying"  # the proxy session is logged in and relaying
        headers = [(b"Authorization", f"Bearer {issue_token(JWT_SECRET, 'alice', 60)}".encode())]
        async with trio_websocket.open_websocket_url(broker.url(), extra_headers=headers) as alice:
            await recv_until(alice, lambda m: m.get("type") == "offline_complete")
            await send_json(alice, {"conversationId": "", "chatType": 1, "content": "to everyone", "contentType": 1})
            assert (await recv_json(alice))["type"] == "chat_ack"  # delivered to every recipient before the ack
        await relayed.send_message("next")
        assert await relayed.get_message() == "next"  # the upstream's echo, no chat frame before it
    assert "to everyone" not in upstream.received


@pytest.mark.parametrize("bad_key", ["sk-abc%0D%0AX-Injected:%201", "sk-abc%00def", "sk-%E4%B8%AD%E6%96%87-key",
                                     "sk-with%20space"])
async def test_a_malformed_client_api_key_gets_400_and_never_reaches_a_log(nursery, tmp_path, upstream, caplog,
                                                                          bad_key):
    caplog.set_level(logging.DEBUG)
    broker = await start_broker(nursery, tmp_path, route(upstream, path="/legacy", allow_client_api_key=True))
    url = f"ws://127.0.0.1:{broker.port}/legacy?token=demo-token&apiKey={bad_key}"
    with pytest.raises(trio_websocket.ConnectionRejected) as refused:
        async with trio_websocket.open_websocket_url(url):
            pass
    assert refused.value.status_code == 400 and b"apiKey" in refused.value.body
    assert b"sk-" not in refused.value.body
    assert upstream.handshakes == []
    # the broker is fine, and nothing of the key (raw or decoded) was logged
    async with trio_websocket.open_websocket_url(url.replace(bad_key, "sk-good-key-1")) as ws:
        await ws.send_message("ok")
        assert await ws.get_message() == "ok"
    for fragment in ("sk-abc", "sk-%E4", "sk-中文", "sk-with", "sk-good-key-1"):
        assert fragment not in caplog.text


async def test_the_api_key_of_a_route_that_ignores_it_may_be_anything(nursery, tmp_path, upstream):
    broker = await start_broker(nursery, tmp_path, route(upstream))
    async with trio_websocket.open_websocket_url(proxy_url(broker, "token=demo-token&apiKey=a%0D%0Ab")) as ws:
        await ws.send_message("ignored key")
        assert await ws.get_message() == "ignored key"
    assert upstream.handshakes[-1]["headers"][b"authorization"] == f"Bearer {UPSTREAM_KEY}".encode()


async def test_an_operator_disconnect_and_ban_reach_proxy_sessions(nursery, tmp_path, upstream):
    """POST /api/users/{id}/disconnect closes the user's proxy-route sessions too (4009,
    and the upstream leg with them); while banned, a proxy session is refused whether
    its token comes in the request (403) or in an auth frame (FORBIDDEN, 1008)."""
    from broker.auth.tokens import issue_token
    from tests.support.helpers import JWT_SECRET, api_request

    broker = await start_broker(nursery, tmp_path, route(upstream))
    token = issue_token(JWT_SECRET, "mallory", 600)
    async with trio_websocket.open_websocket_url(proxy_url(broker, f"token={token}")) as relayed, \
            trio_websocket.open_websocket_url(proxy_url(broker)) as other:  # the demo token: not mallory
        await relayed.send_message("relaying")
        assert await relayed.get_message() == "relaying"
        await other.send_message("still here")
        assert await other.get_message() == "still here"
        status, _ = await api_request(broker.port, "POST", "/api/users/mallory/disconnect", {"banSeconds": 600})
        assert status == 200
        assert await expect_close(relayed) == 4009
        await upstream.wait_until(lambda: upstream.open_now == 1)  # mallory's upstream leg closed, the other's not
        await other.send_message("untouched")
        assert await other.get_message() == "untouched"
    with pytest.raises(trio_websocket.ConnectionRejected) as refused:
        async with trio_websocket.open_websocket_url(proxy_url(broker, f"token={token}")):
            pass
    assert refused.value.status_code == 403
    handshakes = len(upstream.handshakes)
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{broker.port}/api/ws-proxy") as late:
        await late.send_message(f'{{"type":"auth","token":"{token}"}}')
        error = await recv_json(late)
        assert error["type"] == "error" and error["code"] == "FORBIDDEN"
        assert await expect_close(late) == 1008
    assert len(upstream.handshakes) == handshakes  # refused before any upstream was opened
