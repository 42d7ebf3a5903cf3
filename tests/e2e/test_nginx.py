"""The broker behind a real nginx, configured with deploy/nginx/trio-broker.conf.

nginx is installed by scripts/ensure-nginx (run by `make test`); these tests start
their own nginx on a free port with the documented site config.
"""

import json
import os
import re

import pytest
import trio
import trio_websocket

from broker import serve
from broker.config.loader import Config
from broker.tools.httpclient import http_request
from tests.support.helpers import ROOT, RawClient, make_config, recv_json
from tests.support.services import NGINX, Nginx

NGINX_DEFAULT_READ_TIMEOUT = 60  # seconds, when a site sets no proxy_read_timeout

if NGINX is None:
    if os.environ.get("CI"):
        raise RuntimeError("nginx is missing: scripts/ensure-nginx should have installed it")
    pytestmark = pytest.mark.skip(reason="nginx not installed (run scripts/ensure-nginx)")


@pytest.mark.slow
async def test_session_and_health_through_nginx(tmp_path, nursery):
    broker = await nursery.start(serve, make_config(tmp_path, server={"trusted_proxies": ("127.0.0.1",)}))
    async with Nginx(tmp_path, broker.port) as nginx:
        health = await http_request("GET", f"http://127.0.0.1:{nginx.port}/health")
        assert health.status == 200 and json.loads(health.body) == {"status": "ok"}
        url = f"ws://127.0.0.1:{nginx.port}/ws?token=demo-token"
        async with trio_websocket.open_websocket_url(url) as ws:
            assert (await recv_json(ws))["type"] == "connection_established"
            await ws.send_message('{"type":"join_job","jobId":"job-nginx"}')
            assert (await recv_json(ws))["type"] == "joined"
            await broker.publish("job-nginx", "job_status", {"status": "PROXIED"})
            assert (await recv_json(ws))["data"]["status"] == "PROXIED"
            (session,) = broker.broker.hub.sessions()
            assert session.remote_host == "127.0.0.1"  # X-Forwarded-For from the trusted proxy


def test_the_shipped_site_and_nginx_default_read_timeouts_outlast_the_default_heartbeat():
    """What the next test shows at a small scale holds at the shipped scale: the broker
    pings (data nginx reads from upstream) more often than nginx gives up on reading."""
    heartbeat = Config().websocket.heartbeat_interval
    (shipped,) = re.findall(r"proxy_read_timeout (\d+)s;", (ROOT / "deploy" / "nginx" / "trio-broker.conf").read_text())
    assert heartbeat < NGINX_DEFAULT_READ_TIMEOUT and heartbeat < int(shipped)


@pytest.mark.slow
async def test_idle_session_outlives_nginx_read_timeout_thanks_to_heartbeat(tmp_path, nursery):
    """The same ratio scaled down: pings every 0.5 s, nginx's read timeout 3 s. The client
    sends nothing and answers pings until the session has been idle for longer than nginx's
    timeout (pings come no faster than the interval), then uses it."""
    broker = await nursery.start(serve, make_config(tmp_path, websocket={"heartbeat_interval": 0.5}))
    async with Nginx(tmp_path, broker.port, read_timeout="3s") as nginx:
        with trio.fail_after(20):
            client = RawClient(await trio.open_tcp_stream("127.0.0.1", nginx.port))
            assert (await client.handshake("/ws?token=demo-token"))[0] == 101
            assert (await client.next_json())["type"] == "connection_established"
            idle_from = trio.current_time()
            await client.idle_until_pinged(8)  # 8 pings, 0.5 s or more apart: past the 3 s read timeout
            assert trio.current_time() - idle_from > 3.0
            await client.send_json({"type": "ping"})
            assert (await client.next_json())["type"] == "pong"


@pytest.mark.slow
async def test_without_heartbeat_nginx_cuts_the_idle_session(tmp_path, nursery):
    """The control: same setup, heartbeat slower than nginx's read timeout (2 s here)."""
    broker = await nursery.start(serve, make_config(tmp_path, websocket={"heartbeat_interval": 600}))
    async with (Nginx(tmp_path, broker.port, read_timeout="2s") as nginx,
                trio_websocket.open_websocket_url(f"ws://127.0.0.1:{nginx.port}/ws?token=demo-token") as ws):
        await recv_json(ws)
        with trio.fail_after(10), pytest.raises(trio_websocket.ConnectionClosed):
            await ws.get_message()  # nginx drops the silent connection
