"""The hook as the seed's pages call it: ``onConnectionChange(connected)`` gets a
boolean, so a page that shows "Live" when it is true shows "Offline" whenever the
broker is down (a status string such as "disconnected" would be truthy)."""

import socket

from tests.support.browser import make_jwt, wait

LIVE = "document.getElementById('live').textContent"


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_page_from_the_seed_contract_is_live_only_while_connected(start_broker, open_page, node_tools):
    broker = start_broker()
    page = open_page(broker, "seed-hook.html")
    page.evaluate("([url, token]) => start(url, token, 'job-a')", [broker.ws, make_jwt("viewer")])
    wait(page, f"{LIVE} === 'Live'")
    broker.publish("job-a", "job_status", {"status": "RUNNING"})
    wait(page, "document.getElementById('job').textContent === 'RUNNING'")

    broker.stop()  # the broker goes down: the page must not go on saying "Live"
    wait(page, f"{LIVE} === 'Offline'")
    wait(page, "document.getElementById('raw').textContent.startsWith('connecting/')")
    assert page.evaluate(LIVE) == "Offline"
    changes = page.evaluate("changes")
    assert changes == [False, True, False]  # booleans only, one per change
    assert all(isinstance(change, bool) for change in changes)


def test_page_from_the_seed_contract_is_offline_when_the_broker_never_answers(start_broker, open_page,
                                                                            node_tools):
    broker = start_broker()  # serves the page; the hook points at a port where nothing listens
    page = open_page(broker, "seed-hook.html")
    down = f"ws://127.0.0.1:{_unused_port()}/ws"
    page.evaluate("([url, token]) => start(url, token, 'job-a')", [down, make_jwt("viewer")])
    wait(page, "Number(document.getElementById('raw').textContent.split('/')[1]) >= 3")  # failed attempts
    assert page.evaluate(LIVE) == "Offline"
    assert page.evaluate("changes") == [False]
