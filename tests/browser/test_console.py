"""The console page the broker serves at /console, used as a person would: connect, join,
watch a published event arrive in the frame log, drop and go offline to watch a resume,
chat, a raw frame, NDJSON download. A screenshot is kept in tests/browser/artifacts/."""

import json

from tests.support.browser import ARTIFACTS, make_jwt, wait


def test_console_connect_join_and_watch_frames(start_broker, context):
    broker = start_broker()
    page = context.new_page()
    page.goto(f"{broker.http}/console")  # the broker's own page, client and all: no test route
    page.wait_for_selector("html[data-ready='true']", state="attached")  # it imports the client first
    assert page.input_value("#url") == broker.ws
    page.fill("#token", make_jwt("operator"))
    page.click("#connect")
    wait(page, "document.getElementById('status').textContent === 'connected'")

    page.fill("#job-id", "job-console")
    page.click("#join")
    wait(page, "document.getElementById('job-state').textContent === 'joined job-console at seq 0'")
    broker.publish("job-console", "job_status", {"status": "RUNNING", "currentStage": "PLAN"})
    row = page.wait_for_selector("#log tr[data-type='job_status']")
    assert row.query_selector("td:nth-child(4)").text_content() == "1"  # the seq column
    assert "RUNNING" in row.text_content()
    assert "\u2190" in row.text_content()  # inbound
    assert page.text_content("#log tr[data-type='join_job'] td:nth-child(5)").startswith('{"type":"join_job"')

    # drop the connection: the close is explained, the client resumes with lastSeq
    page.click("#drop")
    wait(page, "document.getElementById('close-info').textContent.startsWith('4000')")
    assert "reconnects with backoff and resumes" in page.text_content("#close-info")
    wait(page, "document.getElementById('status').textContent === 'connected'")
    wait(page, "[...document.querySelectorAll('#log tr[data-type=join_job]')].some("
               "(row) => row.textContent.includes('\"lastSeq\":1'))")
    # offline and back
    page.click("#offline")
    wait(page, "document.getElementById('status').textContent === 'reconnecting'")
    assert page.text_content("#offline") == "Go online"
    broker.publish("job-console", "stage_completed", {"stage": "PLAN", "nextStage": "OUTLINE"})
    page.click("#offline")
    row = page.wait_for_selector("#log tr[data-type='stage_completed']")
    assert row.query_selector("td:nth-child(4)").text_content() == "2"

    # chat and a raw frame
    page.fill("#chat-recv", "someone")
    page.fill("#chat-content", "hello from the console")
    page.click("#chat-send")
    wait(page, "document.getElementById('chat-result').textContent.startsWith('stored as msgId')")
    page.fill("#raw-frame", '{"type":"ping"}')
    page.click("#raw-send")
    page.wait_for_selector("#log tr[data-type='pong']")

    # the type filter hides the other rows; pause holds rendering, not recording
    page.fill("#filter", "job_status")
    assert page.eval_on_selector_all("#log tr:not(.hidden)", "rows => rows.map(r => r.dataset.type)") == ["job_status"]
    page.fill("#filter", "")
    page.check("#pause")
    rows = page.eval_on_selector_all("#log tr", "rows => rows.length")
    broker.publish("job-console", "job_status", {"status": "COMPLETED"})
    wait(page, "document.getElementById('frame-count').textContent === '" + str(rows + 1) + " frames'")
    assert page.eval_on_selector_all("#log tr", "rows => rows.length") == rows
    page.uncheck("#pause")
    wait(page, f"document.querySelectorAll('#log tr').length === {rows + 1}")

    with page.expect_download() as download:
        page.click("#download")
    with open(download.value.path(), encoding="utf-8") as saved:
        lines = [json.loads(line) for line in saved]
    assert len(lines) == rows + 1
    assert {"time", "dir", "frame"} <= set(lines[0])
    assert any(json.loads(line["frame"]).get("type") == "job_status" for line in lines)
    assert not any("operator" in line["frame"] and "token" in line["frame"] for line in lines)

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)
    assert (ARTIFACTS / "console.png").stat().st_size > 10_000
