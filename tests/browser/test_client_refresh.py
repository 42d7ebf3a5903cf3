"""Short-lived tokens in the browser: the JS client, the React hook and the console page
renew the token in-band on token_expiring (getToken), and after a 4005 reconnect at once
with a fresh token. Tokens live a few seconds (jwt_leeway 0); the page gets them from
the test through ``window.freshToken`` (Playwright's expose_function)."""

from tests.support.browser import make_jwt, wait
from tests.support.helpers import JWT_SECRET

SHORT = {"jwt_secret": JWT_SECRET, "jwt_leeway": 0.0, "refresh_before": 60.0}
REFRESH_WAIT_MS = 20_000  # a few token lifetimes

START = """([url]) => {
  const client = new broker.BrokerClient(url, { getToken: () => window.freshToken(), minDelay: 20, maxDelay: 100 });
  window.client = client;
  window.statuses = [];
  window.events = [];
  window.refreshed = [];
  client.on("status", (status) => statuses.push(status));
  client.on("token_refreshed", (message) => refreshed.push(message.expiresAt));
  client.joinJob("job-1", { onEvent: (message) => events.push(message.data.status) });
  client.connect();
}"""


def token_source(page, bad_on=()):
    """Tokens for alice living 3 s; the calls numbered in ``bad_on`` get a forged one."""
    calls = []

    def fresh_token():
        calls.append(len(calls) + 1)
        if len(calls) in bad_on:
            return make_jwt("alice", ttl=60)[:-4] + "AAAA"  # the signature no longer verifies
        return make_jwt("alice", jobs=["job-1"], ttl=3)

    page.expose_function("freshToken", fresh_token)
    return calls


def test_the_js_client_refreshes_in_band_without_reconnecting(start_broker, open_page):
    broker = start_broker(auth=SHORT)
    page = open_page(broker)
    calls = token_source(page)
    page.evaluate(START, [broker.ws])
    wait(page, "client.status === 'connected'")
    wait(page, "refreshed.length >= 2", timeout=REFRESH_WAIT_MS)
    broker.publish("job-1", "job_status", {"status": "after two refreshes"})
    wait(page, "events.includes('after two refreshes')")
    assert page.evaluate("statuses") == ["connecting", "connected"]
    assert page.evaluate("[client.refreshes >= 2, client.lastClose, client.tokenExpiresAt.endsWith('Z')]") == [
        True, None, True]
    assert len(calls) >= 3


def test_after_a_4005_the_js_client_reconnects_at_once_with_a_fresh_token(start_broker, open_page):
    broker = start_broker(auth=SHORT)
    page = open_page(broker)
    calls = token_source(page, bad_on=(2,))  # the in-band refresh fails: the token runs out
    page.evaluate(START, [broker.ws])
    wait(page, "client.lastClose && client.lastClose.code === 4005 && client.status === 'connected'",
         timeout=REFRESH_WAIT_MS)
    assert page.evaluate("client.lastClose") == {
        "code": 4005, "action": "retry", "meaning": "token expired: get a new token, then reconnect",
        "reason": "token expired: get a new token, then reconnect",
    }
    assert page.evaluate("statuses") == ["connecting", "connected", "reconnecting", "connected"]
    assert calls == [1, 2, 3]
    broker.publish("job-1", "job_status", {"status": "rejoined"})
    wait(page, "events.includes('rejoined')")


def test_without_get_token_a_4005_stops_the_js_client(start_broker, open_page):
    broker = start_broker(auth=SHORT)
    page = open_page(broker)
    page.evaluate("""([url, token]) => {
      window.client = new broker.BrokerClient(url, { token, minDelay: 20, maxDelay: 100 });
      client.connect();
    }""", [broker.ws, make_jwt("bob", ttl=2)])
    wait(page, "client.status === 'error'", timeout=REFRESH_WAIT_MS)
    assert page.evaluate("[client.lastClose.code, client.lastClose.action, client.nextAttemptAt]") == [
        4005, "stop", None]


def test_the_react_hook_refreshes_in_band(start_broker, open_page, node_tools):
    broker = start_broker(auth=SHORT)
    page = open_page(broker, "react.html")
    token_source(page)
    page.evaluate("""([url]) => {
      configureBroker({ getToken: () => window.freshToken() });
      start(url, undefined, "job-1");
    }""", [broker.ws])
    wait(page, "window.hook && hook.connectionStatus === 'connected'")
    wait(page, "hook.client.refreshes >= 2", timeout=REFRESH_WAIT_MS)
    broker.publish("job-1", "job_status", {"status": "RUNNING"})
    wait(page, "events.some((e) => e[2] === 'RUNNING')")
    assert page.evaluate("statuses") == ["connecting", "connected"]


def test_the_console_shows_the_refresh_and_the_4005_reconnect(start_broker, context):
    """The console's client takes the token field's value on every attempt and on
    token_expiring. A token of 6 s is warned at 3 s: the field is changed right after
    connecting, long before that."""
    broker = start_broker(auth=SHORT)
    page = context.new_page()
    page.goto(f"{broker.http}/console")
    page.wait_for_selector("html[data-ready='true']", state="attached")
    connected = "document.getElementById('status').textContent === 'connected'"
    # 1. in-band: a fresh token pasted into the field goes on the open connection
    page.fill("#token", make_jwt("operator", ttl=6))
    page.click("#connect")
    page.fill("#token", make_jwt("operator", ttl=600))
    wait(page, connected)
    wait(page, "document.getElementById('token-info').textContent.startsWith('refreshed in-band (1)')",
         timeout=REFRESH_WAIT_MS)
    page.wait_for_selector("#log tr[data-type='token_refreshed']", state="attached")
    assert "***" in page.text_content("#log tr.out[data-type='auth']")  # never the token itself
    assert page.text_content("#close-info") == "none"
    # 2. the refresh is refused (a forged token in the field): 4005, explained, and a
    #    reconnect at once with the field's token, valid again by then
    page.fill("#token", make_jwt("operator", ttl=6))
    page.click("#connect")
    page.fill("#token", make_jwt("operator", ttl=600)[:-4] + "AAAA")
    wait(page, connected)
    page.wait_for_selector("#log tr[data-type='error']", state="attached", timeout=REFRESH_WAIT_MS)  # UNAUTHORIZED
    page.fill("#token", make_jwt("operator", ttl=600))
    wait(page, "document.getElementById('close-info').textContent.startsWith('4005') && "
               "document.getElementById('status').textContent === 'connected'", timeout=REFRESH_WAIT_MS)
    assert "reconnects at once with the token in the field" in page.text_content("#close-info")
