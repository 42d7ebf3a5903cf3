"""The auth hook end to end: a real app backend on loopback (tests/support/identity_services.py)
decides who a connection with a session cookie is; the broker caches, bounds and
times out its calls, refuses on 401/403, answers 503 when the backend cannot answer,
and extends a hook identity before it expires by asking again. No cookie value ever
reaches a log line."""

import datetime
import logging
import re
import socket
import subprocess
import sys

import pytest
import trio
import trio.testing
import trio_websocket

from broker import serve
from broker.auth.hook import AuthHook, HookRequest, parse_expiry, principal_from_answer
from broker.auth.tokens import AuthError, AuthUnavailable
from broker.config.loader import AuthConfig, ConfigError, validate_jwt
from tests.support.helpers import (
    DEMO_TOKEN,
    JWT_SECRET,
    ROOT,
    expect_close,
    make_config,
    recv_json,
    recv_until,
    send_json,
)
from tests.support.identity_services import hook_backend

COOKIE = "session=s3cr3t-cookie-value-4242; theme=dark"


def hook_config(tmp_path, url, **auth):
    return make_config(tmp_path, auth={"jwt_secret": JWT_SECRET, "env_token": DEMO_TOKEN, "hook_url": url, **auth})


def iso_in(seconds):
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
    return moment.isoformat().replace("+00:00", "Z")


async def connect(nursery, port, cookie=COOKIE, path="/ws?room=7", **headers):
    extra = [("Cookie", cookie)] if cookie else []
    extra += list(headers.items())
    return await trio_websocket.connect_websocket_url(nursery, f"ws://127.0.0.1:{port}{path}", extra_headers=extra)


async def rejected(port, cookie=COOKIE):
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws", extra_headers=[("Cookie", cookie)]):
            pass
    return info.value


@pytest.mark.slow  # seconds of real time
async def test_a_cookie_the_backend_knows_is_that_user(tmp_path, nursery, caplog):
    caplog.set_level(logging.DEBUG)
    async with hook_backend(**{"s3cr3t-cookie-value-4242": {"userId": "alice", "jobs": ["job-*"],
                                                           "claims": {"role": "editor"}}}) as backend:
        broker = await nursery.start(serve, hook_config(tmp_path, backend.url))
        ws = await connect(nursery, broker.port, Origin=f"http://127.0.0.1:{broker.port}")
        welcome = await recv_json(ws)
        assert (welcome["type"], welcome["userId"]) == ("connection_established", "alice")
        await send_json(ws, {"type": "join_job", "jobId": "job-1"})
        assert (await recv_until(ws, lambda m: m["type"] in ("joined", "error")))["type"] == "joined"
        await send_json(ws, {"type": "join_job", "jobId": "other"})
        assert (await recv_until(ws, lambda m: m["type"] == "error"))["code"] == "FORBIDDEN"
        (asked,) = backend.requests
        assert asked == {"headers": {"Cookie": COOKIE}, "cookies": {"session": "s3cr3t-cookie-value-4242",
                                                                     "theme": "dark"},
                         "path": "/ws", "query": "room=7", "clientAddress": "127.0.0.1",
                         "origin": f"http://127.0.0.1:{broker.port}"}
        unknown = await connect(nursery, broker.port, cookie="session=nobody")
        assert (await recv_json(unknown))["code"] == "UNAUTHORIZED"
        assert await expect_close(unknown) == 1008
    assert not [r for r in caplog.records if "s3cr3t" in r.getMessage() or "nobody" in r.getMessage()]


@pytest.mark.slow  # seconds of real time
async def test_only_allow_listed_headers_are_sent_and_tokens_skip_the_hook(tmp_path, nursery):
    async with hook_backend(**{"abc": {"userId": "bob"}}) as backend:
        config = hook_config(tmp_path, backend.url, hook_headers=("Cookie", "X-Tenant"))
        broker = await nursery.start(serve, config)
        ws = await connect(nursery, broker.port, cookie="session=abc", **{"X-Tenant": "acme", "X-Other": "no"})
        assert (await recv_json(ws))["userId"] == "bob"
        assert backend.requests[0]["headers"] == {"Cookie": "session=abc", "X-Tenant": "acme"}
        static = await connect(nursery, broker.port, cookie="session=abc", Authorization=f"Bearer {DEMO_TOKEN}")
        assert (await recv_json(static))["type"] == "connection_established"
        bare = await connect(nursery, broker.port, cookie=None)  # nothing to ask about: the auth frame
        await send_json(bare, {"type": "auth", "token": DEMO_TOKEN})
        assert (await recv_json(bare))["type"] == "connection_established"
        assert backend.calls.value == 1


@pytest.mark.slow  # seconds of real time
async def test_a_thousand_reconnects_with_one_cookie_make_a_bounded_number_of_calls(tmp_path, nursery):
    async with hook_backend(**{"storm": {"userId": "carol"}}) as backend:
        broker = await nursery.start(serve, hook_config(tmp_path, backend.url, hook_cache_ttl=60))
        admitted = 0

        async def reconnect():
            nonlocal admitted
            async with trio_websocket.open_websocket_url(broker.url(), extra_headers=[("Cookie", "session=storm")]) as ws:
                if (await recv_json(ws, timeout=30))["type"] == "connection_established":
                    admitted += 1

        with trio.fail_after(120):
            for _ in range(10):  # 10 waves of 100 at once, the next wave after the previous one closed
                async with trio.open_nursery() as wave:
                    for _ in range(100):
                        wave.start_soon(reconnect)
        assert admitted == 1000
        assert backend.calls.value == 1  # concurrent upgrades share one call; the rest hit the cache


@pytest.mark.slow  # seconds of real time
async def test_timeouts_and_5xx_answer_503_never_an_accept(tmp_path, nursery, caplog):
    caplog.set_level(logging.WARNING, logger="broker.auth")
    async with hook_backend(**{"abc": {"userId": "dave"}}) as backend:
        broker = await nursery.start(serve, hook_config(tmp_path, backend.url, hook_timeout=0.3))
        backend.status = 502
        assert (await rejected(broker.port, "session=abc")).status_code == 503
        assert (await rejected(broker.port, "session=abc")).status_code == 503
        backend.status, backend.stall = None, True
        assert (await rejected(broker.port, "session=abc")).status_code == 503
        backend.stall = False
        ws = await connect(nursery, broker.port, cookie="session=abc")  # not cached: it asks again
        assert (await recv_json(ws))["userId"] == "dave"
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 2 and "answered HTTP 502" in warnings[0] and "answers again" in warnings[1]
        backend.status = 403
        refused = await connect(nursery, broker.port, cookie="session=other")
        assert (await recv_json(refused))["code"] == "UNAUTHORIZED"
        assert await expect_close(refused) == 1008


async def test_concurrency_is_bounded(nursery):
    async with hook_backend() as backend:
        backend.gate, backend.status = trio.Event(), 500
        hook = AuthHook(AuthConfig(hook_url=backend.url, hook_max_concurrency=3, hook_timeout=30.0))
        await nursery.start(hook.run)
        failures = 0

        async def ask(n):
            nonlocal failures
            try:
                await hook.identify(HookRequest((("Cookie", f"session={n}"),), "/ws", "", "127.0.0.1", None))
            except AuthUnavailable:
                failures += 1

        with trio.fail_after(20):
            async with trio.open_nursery() as callers:
                for n in range(20):
                    callers.start_soon(ask, n)
                await backend.calls.reached(3)
                await trio.testing.wait_all_tasks_blocked()
                assert backend.calls.value == 3 and hook._slots.statistics().tasks_waiting == 17
                backend.gate.set()  # the backend answers (500): the 17 others take the free slots in turn
        assert failures == 20 and backend.calls.value == 20 and backend.most_in_flight == 3


@pytest.mark.slow  # seconds of real time
async def test_a_hook_identity_expires_4005_unless_the_hook_extends_it(tmp_path, nursery):
    async with hook_backend(**{"short": {"userId": "erin", "expiresAt": iso_in(3)}}) as backend:
        config = hook_config(tmp_path, backend.url, jwt_leeway=0.0, hook_cache_ttl=0)
        broker = await nursery.start(serve, config)
        ws = await connect(nursery, broker.port, cookie="session=short")
        assert (await recv_json(ws))["userId"] == "erin"
        # halfway, the broker asks the hook again: the backend extends the session
        backend.sessions["short"] = {"userId": "erin", "expiresAt": iso_in(4)}
        with trio.fail_after(20):
            refreshed = await recv_until(ws, lambda m: m["type"] == "token_refreshed", timeout=20)
            assert refreshed["expiresAt"].endswith("Z")
            backend.sessions.clear()  # logged out: the next ask is refused and the connection runs out
            error = await recv_until(ws, lambda m: m["type"] == "error", timeout=20)
        assert error["code"] == "TOKEN_EXPIRED"
        assert await expect_close(ws) == 4005
        assert backend.calls.value == 3


def test_answers_and_config():
    assert parse_expiry("2030-01-01T00:00:00Z") == 1893456000
    assert parse_expiry(1893456000) == 1893456000
    with pytest.raises(ValueError):
        parse_expiry("2030-01-01T00:00:00")  # no zone
    with pytest.raises(ConfigError, match="hook_url"):
        validate_jwt(AuthConfig(jwt_secret=JWT_SECRET, hook_url="ftp://x"))
    with pytest.raises(ConfigError, match="hook_headers"):
        validate_jwt(AuthConfig(jwt_secret=JWT_SECRET, hook_url="http://x/a", hook_headers=("Bad Header",)))
    assert issubclass(AuthUnavailable, AuthError)
    request = HookRequest((("Cookie", "session=x"),), "/ws", "", "10.0.0.1", None)
    assert "session=x" not in repr(request)


@pytest.mark.slow  # seconds of real time
async def test_the_readme_backend_in_twenty_lines_works(tmp_path, nursery):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- hook-example -->\n```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 21
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-c", code.replace("8090", str(port))])
    try:
        with trio.fail_after(10):  # the backend's process binds its port, then serves
            while True:
                try:
                    await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await trio.sleep(0.05)
        broker = await nursery.start(serve, hook_config(tmp_path, f"http://127.0.0.1:{port}/ws-auth"))
        ws = await connect(nursery, broker.port, cookie="session=c0ffee")
        assert (await recv_json(ws))["userId"] == "42"
        refused = await connect(nursery, broker.port, cookie="session=stale")
        assert (await recv_json(refused))["code"] == "UNAUTHORIZED"
    finally:
        process.kill()
        process.wait()


def test_a_hook_user_id_follows_the_rules_of_a_jwt_sub():
    request = HookRequest((("Cookie", "session=x"),), "/ws", "", "10.0.0.1", None)
    assert principal_from_answer({"userId": 42}, request, ()).user_id == "42"
    for bad in ({"userId": "system"}, {"userId": "line\nbreak"}, {"userId": ""}, {"userId": "x" * 129},
                {"userId": "a", "jobs": "job-1"}, {"userId": "a", "claims": []}, []):
        with pytest.raises(ValueError):
            principal_from_answer(bad, request, ())
