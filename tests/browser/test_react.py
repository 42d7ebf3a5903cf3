"""useWebSocket under React StrictMode (development build: effects mount twice): one
socket, statuses reported in order, job switches leave the old job (React from npm)."""

from tests.support.browser import make_jwt, wait


def test_hook_under_strict_mode_opens_one_socket_and_reports_statuses_in_order(start_broker, open_page,
                                                                               node_tools):
    broker = start_broker()
    page = open_page(broker, "react.html")
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.evaluate("([url, token]) => start(url, token, 'job-a')", [broker.ws, make_jwt("viewer")])
    wait(page, "statuses.includes('connected')")
    wait(page, "document.getElementById('status').textContent === 'connected / attempts 0'")
    # joined: the job's room has this one member
    wait(page, "hook.client.jobs.get('job-a').lastSeq === 0")
    assert sockets == [broker.ws]
    assert broker.run_sync(lambda: len(broker.handle.broker.hub.sessions_of("viewer"))) == 1

    broker.publish("job-a", "job_status", {"status": "RUNNING"})
    broker.publish("job-a", "stage_completed", {"stage": "PLAN"})
    broker.publish("job-a", "job_error", {"error": "boom"})
    wait(page, "events.length === 3")

    broker.evict_user("viewer", 4003)  # dropped: "connecting" again, then back
    wait(page, "statuses.length === 4")
    broker.publish("job-a", "job_status", {"status": "RECOVERED"})
    wait(page, "events.length === 4")

    # another job: the old one is left, the new one joined on the same socket
    page.evaluate("render('job-b')")
    wait(page, "hook.client.jobs.has('job-b') && !hook.client.jobs.has('job-a')")
    wait(page, "hook.client.jobs.get('job-b').lastSeq === 0")
    broker.publish("job-a", "job_status", {"status": "NOT FOR THIS PAGE"})
    broker.publish("job-b", "job_status", {"status": "QUEUED"})
    wait(page, "events.length === 5")

    page.evaluate("hook.disconnect()")
    wait(page, "statuses.length === 5")
    assert page.evaluate("statuses") == ["connecting", "connected", "connecting", "connected", "disconnected"]
    assert page.evaluate("events") == [
        ["status", "job-a", "RUNNING"], ["stage", "job-a", "PLAN"], ["error", "job-a", "boom"],
        ["status", "job-a", "RECOVERED"], ["status", "job-b", "QUEUED"],
    ]
    assert sockets == [broker.ws, broker.ws]  # the first, and the one after the 4003
    assert page.evaluate("errors") == []
