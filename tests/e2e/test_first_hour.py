"""What a newcomer meets first, over real loopback sockets: ``GET /`` lists the endpoints,
errors name the claim or setting that would allow the request and carry the request's
id, production defaults stay strict (no jobs for a bare JWT, no foreign origins),
``/metrics`` can require a token, the development defaults open exactly what they say."""

from __future__ import annotations

import json

import trio
import trio_websocket

from broker import serve
from broker.auth.tokens import issue_token
from broker.config.dev import apply_dev_defaults
from broker.tools.httpclient import http_request
from tests.support.helpers import API_KEY, DEMO_TOKEN, JWT_SECRET, make_config, recv_json, recv_until


async def test_get_root_is_an_index_of_the_endpoints(broker):
    response = await http_request("GET", f"http://127.0.0.1:{broker.port}/")
    assert response.status == 200 and response.headers.get("content-type") == "application/json"
    index = json.loads(response.text)
    assert index["endpoints"]["websocket"] == "/ws" and index["endpoints"]["health"] == "/health"
    assert index["endpoints"]["console"] == "/console" and index["endpoints"]["metrics"] == "/metrics"
    assert index["endpoints"]["publish"].startswith("POST /api/publish")
    assert index["endpoints"]["sse"].startswith("GET /sse")
    assert "/console" in index["hint"]
    missing = await http_request("GET", f"http://127.0.0.1:{broker.port}/nothing-here")
    assert missing.status == 404 and "GET / lists the endpoints" in missing.text


async def test_refusals_name_what_would_allow_them_and_their_request(broker):
    """Production defaults: a JWT without a jobs claim joins nothing; the FORBIDDEN says
    how to allow it and carries the jobId; a static token's chat send is refused with
    its clientMsgId (a console or client can tell which request failed)."""
    bare = issue_token(JWT_SECRET, "alice", 60)
    async with trio_websocket.open_websocket_url(f"{broker.url()}?token={bare}") as ws:
        await recv_json(ws)
        await ws.send_message('{"type":"join_job","jobId":"job-123"}')
        error = await recv_until(ws, lambda m: m.get("type") == "error")
        assert error["code"] == "FORBIDDEN" and error["jobId"] == "job-123"
        assert '"jobs" claim' in error["message"] and "[auth] jwt_default_jobs" in error["message"]
    async with trio_websocket.open_websocket_url(f"{broker.url()}?token={DEMO_TOKEN}") as ws:
        await recv_json(ws)
        await ws.send_message(json.dumps({"chatType": 2, "recvId": "bob", "content": "hi", "clientMsgId": "m-1"}))
        error = await recv_until(ws, lambda m: m.get("type") == "error")
        assert error["code"] == "FORBIDDEN" and error["clientMsgId"] == "m-1"
        assert "JWT" in error["message"] and "broker token --sub" in error["message"]
    unknown = await http_request("POST", f"http://127.0.0.1:{broker.port}/api/publish",
                                 headers={"Authorization": f"Bearer {API_KEY}"},
                                 body=b'{"jobId":"job-1","type":"job_progress","data":{}}')
    assert unknown.status == 400 and "[jobs] extra_event_types" in unknown.text


async def test_production_refuses_foreign_origins_and_development_admits_loopback(nursery, tmp_path):
    production = await nursery.start(serve, make_config(tmp_path / "p"))
    development = await nursery.start(serve, apply_dev_defaults(make_config(tmp_path / "d")))
    page = [("Origin", "http://localhost:5173")]
    try:
        async with trio_websocket.open_websocket_url(f"{production.url()}?token={DEMO_TOKEN}", extra_headers=page):
            raise AssertionError("a foreign origin was admitted in production")
    except trio_websocket.HandshakeError as exc:
        assert isinstance(exc, trio_websocket.ConnectionRejected) and exc.status_code == 403
        assert b"[limits] allowed_origins" in (exc.body or b"")
    bare = issue_token(JWT_SECRET, "alice", 60)
    async with trio_websocket.open_websocket_url(f"{development.url()}?token={bare}", extra_headers=page) as ws:
        await recv_json(ws)
        await ws.send_message('{"type":"join_job","jobId":"job-123"}')
        assert (await recv_until(ws, lambda m: m.get("type") in ("joined", "error")))["type"] == "joined"
    for foreign in ("https://evil.example", "http://localhost.evil.example"):
        try:
            async with trio_websocket.open_websocket_url(f"{development.url()}?token={bare}",
                                                         extra_headers=[("Origin", foreign)]):
                raise AssertionError(f"{foreign} was admitted in development")
        except trio_websocket.ConnectionRejected as exc:
            assert exc.status_code == 403


async def test_metrics_can_require_a_token(nursery, tmp_path):
    handle = await nursery.start(serve, make_config(tmp_path, server={"host": "127.0.0.1", "port": 0,
                                                                      "metrics_token": "scrape-secret-1"}))
    url = f"http://127.0.0.1:{handle.port}/metrics"
    refused = await http_request("GET", url)
    assert refused.status == 401 and "metrics_token" in refused.text
    wrong = await http_request("GET", url, headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    allowed = await http_request("GET", url, headers={"Authorization": "Bearer scrape-secret-1"})
    assert allowed.status == 200 and "broker_" in allowed.text
    with trio.fail_after(5):
        health = await http_request("GET", f"http://127.0.0.1:{handle.port}/health")
    assert health.status == 200  # only metrics need it
