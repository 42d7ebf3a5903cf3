"""The console shows every request's outcome: an empty token is refused at once with a
hint, a refused chat says FORBIDDEN and why (not "sending" forever), a refused join says
so in the job section, and the job section follows the last seq as events arrive."""

from tests.support.browser import make_jwt, wait


def open_console(broker, context):
    page = context.new_page()
    page.goto(f"{broker.http}/console")
    page.wait_for_selector("html[data-ready='true']", state="attached")
    return page


def connect(page, token: str) -> None:
    page.fill("#token", token)
    page.click("#connect")
    wait(page, "document.getElementById('status').textContent === 'connected'")


def test_an_empty_token_is_refused_at_once_with_a_hint(start_broker, context):
    page = open_console(start_broker(), context)
    page.click("#connect")
    hint = page.text_content("#connect-result")  # synchronous: no 10 s wait for a generic failure
    assert "enter a token first" in hint and "broker token --sub alice" in hint and "demo-token" in hint
    assert page.text_content("#status") == "disconnected"
    page.click("#chat-send")
    assert page.text_content("#chat-result") == "connect first"
    page.click("#join")
    assert page.text_content("#job-state") == "connect first"


def test_refused_requests_show_their_error(start_broker, context):
    broker = start_broker()
    page = open_console(broker, context)
    connect(page, "demo-token")  # a static token: joins jobs, cannot chat
    page.fill("#chat-recv", "bob")
    page.fill("#chat-content", "hello")
    page.click("#chat-send")
    wait(page, "document.getElementById('chat-result').textContent.startsWith('not sent: FORBIDDEN: ')")
    assert "JWT" in page.text_content("#chat-result")

    connect(page, make_jwt("alice", jobs=["other-*"]))  # a user whose claim does not cover job-123
    page.fill("#job-id", "job-123")
    page.click("#join")
    wait(page, "document.getElementById('job-state').textContent.startsWith('join refused: FORBIDDEN: ')")
    state = page.text_content("#job-state")
    assert "job-123" in state and '"jobs" claim' in state and "jwt_default_jobs" in state
    assert page.text_content("#last-error").startswith("FORBIDDEN: ")


def test_the_job_section_follows_the_last_seq(start_broker, context):
    broker = start_broker()
    page = open_console(broker, context)
    connect(page, make_jwt("alice"))
    page.fill("#job-id", "job-seq")
    page.click("#join")
    wait(page, "document.getElementById('job-state').textContent === 'joined job-seq at seq 0'")
    broker.publish("job-seq", "job_status", {"status": "RUNNING"})
    wait(page, "document.getElementById('job-seq').textContent === 'last seq 1 (job_status)'")
    broker.publish("job-seq", "stage_completed", {"stage": "PLAN"})
    wait(page, "document.getElementById('job-seq').textContent === 'last seq 2 (stage_completed)'")
    page.fill("#chat-recv", "bob")
    page.fill("#chat-content", "hi bob")
    page.click("#chat-send")
    wait(page, "document.getElementById('chat-result').textContent.startsWith('stored as msgId')")
