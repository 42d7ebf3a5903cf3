"""The admin page the broker serves at /admin, used as an operator would: sign in with
the API key, see a connection appear, look the user up and disconnect it (its client
gets 4009 and stays closed), publish and watch the chart move, look up a job and a
conversation; untrusted text stays text. The screenshot goes to tests/browser/artifacts/
(docs/admin.png is one of them, copied by hand so a test run leaves the docs alone)."""

import json

from tests.support.browser import ARTIFACTS, make_jwt, wait
from tests.support.helpers import API_KEY


def test_admin_sign_in_watch_disconnect_and_publish(start_broker, context):
    broker = start_broker()
    admin = context.new_page()
    errors = []
    admin.on("pageerror", lambda error: errors.append(str(error)))
    admin.goto(f"{broker.http}/admin")
    admin.wait_for_selector("html[data-ready='true']", state="attached")
    assert admin.is_hidden("#overview")  # nothing but the key form before signing in
    admin.select_option("#interval", "1000")
    admin.fill("#key", "wrong-key")
    admin.click("#sign-in")
    wait(admin, "document.getElementById('login-error').textContent === 'the key was refused'")
    admin.fill("#key", API_KEY)
    admin.click("#sign-in")
    wait(admin, "document.getElementById('state').textContent === 'signed in'")
    assert admin.evaluate("sessionStorage.getItem('trio-broker-admin-key')") == API_KEY
    assert admin.evaluate("localStorage.length") == 0 and admin.evaluate("document.cookie") == ""
    node_id = broker.run_sync(lambda: broker.handle.broker.backplane.node_id)
    wait(admin, f"document.querySelector('#nodes td') && document.querySelector('#nodes td').textContent === '{node_id}'")
    assert admin.text_content("#nodes td:nth-child(2)") == "0"
    assert "no webhook sender" in admin.text_content("#webhooks-state")

    # a user connects with the console page: the connection appears
    user = context.new_page()
    user.goto(f"{broker.http}/console")
    user.wait_for_selector("html[data-ready='true']", state="attached")
    user.fill("#token", make_jwt("<b>alice</b>"))
    user.click("#connect")
    wait(user, "document.getElementById('status').textContent === 'connected'")
    wait(admin, "document.querySelector('#nodes td:nth-child(2)').textContent === '1'")
    wait(admin, "document.getElementById('chart-connections').dataset.latest === '1'")

    # look the user up (its id is text, not markup) and disconnect it
    admin.fill("#user-id", "<b>alice</b>")
    admin.click("#user-form button")
    wait(admin, f"document.getElementById('user-summary').textContent === 'online: 1 connection(s) on {node_id}'")
    admin.fill("#disconnect-reason", "kicked from the admin page")
    admin.click("#disconnect")
    wait(admin, "document.getElementById('user-result').textContent === 'closing 1 connection(s) with 4009'")
    wait(user, "document.getElementById('close-info').textContent.startsWith('4009')")
    assert "stays disconnected" in user.text_content("#close-info")
    wait(admin, "document.getElementById('user-summary').textContent === 'offline'")
    wait(admin, "document.querySelector('#nodes td:nth-child(2)').textContent === '0'")

    # publish test events: the publishes chart moves; the job's history shows them as text
    admin.fill("#job-id", "job-admin")
    for status in ("RUNNING", "<img src=x onerror=alert(1)>"):
        admin.fill("#publish-status", status)
        admin.click("#publish-form button")
        wait(admin, "document.getElementById('publish-result').textContent.startsWith('published job-admin')")
        admin.evaluate("document.getElementById('publish-result').textContent = ''")
    wait(admin, "Number(document.getElementById('chart-publishes').dataset.max) > 0")
    assert admin.get_attribute("#chart-publishes polyline", "points").count(",") >= 2
    admin.click("#job-form button")
    wait(admin, "document.querySelectorAll('#job-events tr').length === 2")
    assert admin.text_content("#job-summary").startswith("seq 2, status <img src=x onerror=alert(1)>")
    assert admin.query_selector("#job-events img") is None  # shown as text, never as markup
    assert json.loads(admin.text_content("#job-events tr:nth-child(2) td.data"))["status"].startswith("<img")

    # a system message and the conversation's page
    broker_key = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    sent = admin.request.post(f"{broker.http}/api/chat/messages", headers=broker_key, data=json.dumps(
        {"sendId": "system", "chatType": 2, "recvId": "bob", "content": "<script>alert(1)</script>"})).json()
    admin.fill("#conversation-id", sent["conversationId"])
    admin.click("#conversation-form button")
    wait(admin, "document.querySelectorAll('#messages tr').length === 1")
    assert admin.text_content("#messages td.data") == "<script>alert(1)</script>"

    ARTIFACTS.mkdir(exist_ok=True)
    admin.screenshot(path=str(ARTIFACTS / "admin.png"), full_page=True)
    assert (ARTIFACTS / "admin.png").stat().st_size > 10_000
    admin.click("#sign-out")
    assert admin.evaluate("sessionStorage.getItem('trio-broker-admin-key')") is None
    assert errors == []


def test_the_admin_page_is_served_under_a_strict_policy(start_broker, context):
    broker = start_broker()
    response = context.request.get(f"{broker.http}/admin")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "unsafe" not in policy and response.headers["x-frame-options"] == "DENY"
    assert 'data-api="/api"' in response.text()
