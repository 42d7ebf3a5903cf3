"""Close codes that stop the client (4001, 1008), and frame auth keeping the token out of URLs."""

import logging

from tests.support.browser import make_jwt, wait

START = """([url, token, auth]) => {
  const client = new broker.BrokerClient(url, { token, auth, minDelay: 20, maxDelay: 100 });
  window.client = client;
  window.statuses = [];
  client.on("status", (status) => statuses.push(status));
  client.connect();
}"""


def test_a_second_login_stops_the_first_page_for_good(start_broker, open_page):
    broker = start_broker()
    first, second = open_page(broker), open_page(broker)
    token = make_jwt("bob")
    first.evaluate(START, [broker.ws, token, "frame"])
    wait(first, "client.status === 'connected'")
    second.evaluate(START, [broker.ws, token, "frame"])
    wait(second, "client.status === 'connected'")
    wait(first, "client.status === 'error'")
    assert first.evaluate("client.lastClose") == {
        "code": 4001, "action": "stop", "meaning": "replaced by a newer login of the same user",
        "reason": "replaced by a newer login",
    }
    assert first.evaluate("statuses") == ["connecting", "connected", "error"]
    # stopped: no attempt scheduled, and the broker holds only the newer connection
    assert first.evaluate("[client.nextAttemptAt, client.attempts]") == [None, 0]
    assert broker.run_sync(lambda: len(broker.handle.broker.hub.sessions_of("bob"))) == 1
    assert second.evaluate("statuses") == ["connecting", "connected"]


def test_a_refused_token_stops_with_1008(start_broker, open_page):
    broker = start_broker()
    page = open_page(broker)
    page.evaluate(START, [broker.ws, "not-a-valid-token", "frame"])
    wait(page, "client.status === 'error'")
    assert page.evaluate("[client.lastClose.code, client.lastClose.action, client.nextAttemptAt]") == [
        1008, "stop", None,
    ]
    assert page.evaluate("statuses") == ["connecting", "error"]
    assert page.evaluate("client.attempts") == 1


def test_frame_auth_keeps_the_token_out_of_every_url_and_log(start_broker, open_page, context, caplog):
    caplog.set_level(logging.DEBUG)
    broker = start_broker()
    token = make_jwt("carol")
    urls: list[str] = []
    context.on("request", lambda request: urls.append(request.url))
    page = open_page(broker)
    page.on("websocket", lambda ws: urls.append(ws.url))
    page.evaluate(START, [broker.ws, token, "frame"])
    wait(page, "client.status === 'connected'")
    page.evaluate("client.drop()")  # and once more, on a reconnect
    wait(page, "client.status === 'connected' && client.lastClose && client.lastClose.code === 4000")
    websocket_urls = [url for url in urls if url.startswith("ws")]
    assert websocket_urls == [broker.ws, broker.ws]
    assert not [url for url in urls if token in url]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "carol" in logged  # the broker did log these connections...
    assert token not in logged  # ...and never the token

    # the control: "query" auth does put it in the URL (for servers that need it)
    query_page = open_page(broker)
    query_page.on("websocket", lambda ws: urls.append(ws.url))
    query_page.evaluate(START, [broker.ws, make_jwt("dave"), "query"])
    wait(query_page, "client.status === 'connected'")
    assert any("token=" in url for url in urls)
