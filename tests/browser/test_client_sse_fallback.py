"""The fallback in Chromium behind a real nginx. Configured as seed 001's hosting was
(the documented site, deploy/nginx/trio-broker.conf, without the Upgrade/Connection
forwarding, HTTP/1.1 to the upstream or response buffering off), the WebSocket can never
open: a page built on the client goes on over SSE + POST, gets every job event, chats
both ways with acks, and resumes across a broker restart with no gap and no duplicate.
Behind the documented config the same page stays on WebSocket."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import attrs
import pytest

from broker.protocols.chat import private_conversation_id
from tests.support.browser import WAIT_MS, make_jwt, wait
from tests.support.helpers import ROOT
from tests.support.services import NGINX, free_port, require_nginx

START = """([url, token, jobId]) => {
  const client = new broker.BrokerClient(url, { token, minDelay: 20, maxDelay: 200 });
  window.client = client;
  window.events = [];
  window.chats = [];
  window.transports = [];
  client.on("transport", (transport) => transports.push(transport));
  client.on("chat", (message) => chats.push(message));
  if (jobId) client.joinJob(jobId, {
    onJobStatusUpdate: (data, message) => events.push(["status", message.seq, data.status]),
    onStageCompleted: (data, message) => events.push(["stage", message.seq, data.stage]),
    onJobError: (data, message) => events.push(["error", message.seq, data.error]),
  });
  client.connect();
}"""


# nginx is the trusted proxy; the page's origin is nginx's (its port is not in the Host
# nginx forwards, $host), so it is allowed by name
BEHIND_NGINX = {"server": {"trusted_proxies": ("127.0.0.1",)}, "limits": {"allowed_origins": ("http://127.0.0.1:*",)}}


def hosting_site(broker_port: int, listen_port: int, strip_upgrade: bool) -> str:
    """The documented site; ``strip_upgrade``: as a hosting platform that does not pass
    WebSockets (no Upgrade/Connection forwarding, nginx's HTTP/1.0 upstream default,
    its default response buffering)."""
    site = (ROOT / "deploy" / "nginx" / "trio-broker.conf").read_text()
    site = site.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{broker_port};")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{listen_port};")
    if strip_upgrade:
        for directive in ("proxy_set_header Upgrade", "proxy_set_header Connection", "proxy_http_version",
                          "proxy_buffering"):
            site, removed = re.subn(rf"\n\s*{directive}[^;]*;[^\n]*", "", site)
            assert removed == 1, directive
    return site


@attrs.define
class NginxProcess:
    port: int
    process: subprocess.Popen
    prefix: Path

    @property
    def http(self) -> str:  # what open_page needs of a server: the page's origin
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def access_log(self) -> str:
        path = self.prefix / "access.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def start_nginx(tmp_path):
    require_nginx()
    started: list[NginxProcess] = []

    def start(broker_port: int, strip_upgrade: bool) -> NginxProcess:
        port = free_port()
        prefix = tmp_path / f"nginx-{port}"
        (prefix / "temp").mkdir(parents=True)
        (prefix / "nginx.conf").write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/temp/body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
{hosting_site(broker_port, port, strip_upgrade)}
}}
""")
        process = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                    "-e", str(prefix / "error.log")], stderr=subprocess.PIPE, text=True)
        nginx = NginxProcess(port, process, prefix)
        started.append(nginx)
        deadline = time.monotonic() + 10
        while True:  # nginx is another process: poll its port until it listens, bounded
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "nginx did not start"
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return nginx
            time.sleep(0.02)

    yield start
    for nginx in started:
        nginx.process.send_signal(signal.SIGQUIT)
        try:
            nginx.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            nginx.process.kill()
            nginx.process.wait()


def seqs(page) -> list[int]:
    return page.evaluate("events.map((event) => event[1])")


def test_behind_a_proxy_that_strips_the_upgrade_the_page_goes_on_over_sse(start_broker, start_nginx, open_page,
                                                                          browser, free_port_for_broker):
    port = free_port_for_broker
    broker = start_broker(port=port, **BEHIND_NGINX)
    nginx = start_nginx(port, strip_upgrade=True)
    page = open_page(nginx)
    websockets: list[str] = []
    page.on("websocket", lambda ws: websockets.append(ws.url))
    page.evaluate(START, [nginx.ws, make_jwt("alice"), "job-1"])
    wait(page, "client.status === 'connected'")
    assert page.evaluate("[client.transport, transports]") == ["sse", ["sse"]]
    assert websockets and all(url == nginx.ws for url in websockets)  # tried, never opened
    (session,) = broker.run_sync(lambda: broker.handle.broker.hub.sessions_of("alice"))
    assert session.transport == "sse" and session.remote_host == "127.0.0.1"
    wait(page, "client.jobs.get('job-1').lastSeq === 0")

    # every job event, in order
    broker.publish("job-1", "job_status", {"status": "RUNNING"})
    broker.publish("job-1", "stage_completed", {"stage": "PLAN"})
    broker.publish("job-1", "job_error", {"error": "boom", "stage": "OUTLINE"})
    wait(page, "events.length === 3")
    assert page.evaluate("events") == [["status", 1, "RUNNING"], ["stage", 2, "PLAN"], ["error", 3, "boom"]]

    # chat both ways with a page on a working WebSocket (straight to the broker), with acks
    bob_context = browser.new_context()
    bob_context.set_default_timeout(WAIT_MS)
    try:
        bob = open_page(broker, in_context=bob_context)
        bob.evaluate(START, [broker.ws, make_jwt("bob"), None])
        wait(bob, "client.status === 'connected'")
        assert bob.evaluate("client.transport") == "websocket"
        ack = page.evaluate("client.sendChat({ chatType: 2, recvId: 'bob', content: 'over SSE' })")
        assert ack["type"] == "chat_ack" and ack["conversationId"] == private_conversation_id("alice", "bob")
        wait(bob, "chats.length === 1")
        assert bob.evaluate("[chats[0].content, chats[0].msgId, chats[0].sendId]") == ["over SSE", ack["msgId"], "alice"]
        reply = bob.evaluate("client.sendChat({ chatType: 2, recvId: 'alice', content: 'over WebSocket' })")
        wait(page, "chats.length === 1")
        assert page.evaluate("[chats[0].content, chats[0].msgId]") == ["over WebSocket", reply["msgId"]]
    finally:
        bob_context.close()

    # a broker restart: events published meanwhile (another broker, same database) are
    # replayed when the page is back, over SSE again, with no gap and no duplicate
    broker.stop()
    wait(page, "client.status === 'reconnecting'")
    # a chat send while the broker is away waits in the outbox and is sent after the restart
    page.evaluate("() => { window.pending = client.sendChat({ chatType: 2, recvId: 'bob', content: 'while down' }); }")
    elsewhere = start_broker()
    elsewhere.publish("job-1", "stage_completed", {"stage": "OUTLINE"})
    elsewhere.publish("job-1", "job_status", {"status": "RUNNING", "currentStage": "RENDER"})
    elsewhere.stop()
    restarted = start_broker(port=port, **BEHIND_NGINX)
    wait(page, "events.length === 5")
    restarted.publish("job-1", "job_status", {"status": "COMPLETED"})
    wait(page, "events.length === 6")
    assert seqs(page) == [1, 2, 3, 4, 5, 6]
    assert page.evaluate("[client.status, client.transport]") == ["connected", "sse"]
    held = page.evaluate("pending")
    assert held["type"] == "chat_ack" and held["msgId"] > reply["msgId"]
    ack = page.evaluate("client.sendChat({ chatType: 2, recvId: 'bob', content: 'after the restart' })")
    assert ack["type"] == "chat_ack" and ack["msgId"] > held["msgId"]
    log = nginx.access_log()
    assert '"GET /sse HTTP/1.1" 200' in log and '"POST /sse HTTP/1.1" 204' in log


def test_behind_the_documented_proxy_the_page_stays_on_websocket(start_broker, start_nginx, open_page,
                                                                free_port_for_broker):
    port = free_port_for_broker
    broker = start_broker(port=port, **BEHIND_NGINX)
    nginx = start_nginx(port, strip_upgrade=False)
    page = open_page(nginx)
    sse_requests: list[str] = []
    page.on("request", lambda request: sse_requests.append(request.url) if "/sse" in request.url else None)
    page.evaluate(START, [nginx.ws, make_jwt("alice"), "job-1"])
    wait(page, "client.status === 'connected'")
    wait(page, "client.jobs.get('job-1').lastSeq === 0")
    broker.publish("job-1", "job_status", {"status": "RUNNING"})
    wait(page, "events.length === 1")
    (session,) = broker.run_sync(lambda: broker.handle.broker.hub.sessions_of("alice"))
    assert session.transport == "websocket"
    assert page.evaluate("[client.transport, transports]") == ["websocket", []]
    assert sse_requests == []


@pytest.fixture
def free_port_for_broker() -> int:
    return free_port()
