"""A page on another origin (a Vite dev server's, http://localhost:5173) and the broker:
refused in production, the client says so distinctly (UPGRADE_REFUSED, with the setting
and the doctor command) instead of reconnecting in silence; a broker that does not answer
is UNREACHABLE; the development defaults (make run) let the page in, and a plain JWT joins."""

from __future__ import annotations

import pytest

from broker.auth.tokens import issue_token
from broker.config.dev import apply_dev_defaults
from tests.support.browser import BrokerThread, wait
from tests.support.helpers import JWT_SECRET, make_config
from tests.support.services import free_port

PAGE_ORIGIN = "http://localhost:5173"
PAGE = """<!doctype html><p id="status">disconnected</p><pre id="errors"></pre><script type="module">
  import { BrokerClient } from "%(http)s/client/broker-client.mjs";
  const client = new BrokerClient("%(ws)s", { token: "%(token)s", minDelay: 50, maxDelay: 200 });
  window.errors = [];
  window.events = [];
  client.on("status", (status) => (document.getElementById("status").textContent = status));
  client.on("error", (error) => window.errors.push({ code: error.code, message: error.message }));
  client.joinJob("job-123", { onJobStatusUpdate: (data) => window.events.push(data.status) });
  client.connect();
  window.ready = true;
</script>"""


def open_foreign_page(context, http: str, ws: str, token: str):
    """The page served from PAGE_ORIGIN (fulfilled by Playwright), importing the client from the broker."""
    page = context.new_page()
    body = PAGE % {"http": http, "ws": ws, "token": token}
    page.route(f"{PAGE_ORIGIN}/**", lambda route: route.fulfill(status=200, body=body,
                                                                 headers={"Content-Type": "text/html"}))
    page.goto(f"{PAGE_ORIGIN}/index.html")
    page.wait_for_function("window.ready === true")
    return page


@pytest.fixture
def dev_broker(tmp_path):
    broker = BrokerThread(apply_dev_defaults(make_config(tmp_path / "dev")))
    yield broker
    broker.stop()


def test_a_refused_upgrade_is_reported_with_the_fix(start_broker, context):
    broker = start_broker()  # production defaults: no allowed_origins
    page = open_foreign_page(context, broker.http, broker.ws, "demo-token")
    error = wait(page, "window.errors.find((e) => e.code === 'UPGRADE_REFUSED')")
    assert "allowed_origins" in error["message"] and PAGE_ORIGIN in error["message"]
    assert f"broker doctor {broker.ws} --origin {PAGE_ORIGIN}" in error["message"]
    assert page.text_content("#status") in ("reconnecting", "connecting")  # it keeps trying, and says why


def test_an_unreachable_broker_is_not_called_refused(start_broker, context):
    broker = start_broker()  # serves the client module; the socket goes to a port nobody listens on
    nobody = f"ws://127.0.0.1:{free_port()}/ws"
    page = open_foreign_page(context, broker.http, nobody, "demo-token")
    error = wait(page, "window.errors.find((e) => e.code === 'UPGRADE_REFUSED' || e.code === 'UNREACHABLE')")
    assert error["code"] == "UNREACHABLE" and nobody in error["message"]


def test_development_admits_the_page_and_a_plain_jwt_joins(dev_broker, context):
    page = open_foreign_page(context, dev_broker.http, dev_broker.ws, issue_token(JWT_SECRET, "alice", 300))  # no jobs claim
    wait(page, "document.getElementById('status').textContent === 'connected'")
    dev_broker.publish("job-123", "job_status", {"status": "RUNNING"})
    assert wait(page, "window.events.length === 1 && window.events") == ["RUNNING"]
    assert page.evaluate("window.errors") == []
