"""The mini-program adapter: the same client on a fake `wx` that behaves as the documented
wx.connectSocket API does (tests/browser/pages/wx.html), against the real broker."""

from tests.support.browser import make_jwt, wait

START = """([url, token]) => {
  const client = createWxClient(fakeWx, url, { token, minDelay: 20, maxDelay: 100 });
  window.client = client;
  window.seqs = [];
  client.joinJob("job-wx", { onEvent: (message) => seqs.push(message.seq) });
  client.connect();
}"""


def test_client_runs_on_wx_connect_socket_and_follows_the_app_lifecycle(start_broker, open_page):
    broker = start_broker()
    page = open_page(broker, "wx.html")
    assert page.evaluate("typeof WebSocket") == "undefined"
    page.evaluate(START, [broker.ws, make_jwt("mini")])
    wait(page, "client.status === 'connected' && client.jobs.get('job-wx').lastSeq === 0")
    # the token went in the first frame through task.send({data}), never in the URL
    assert page.evaluate("calls.slice(0, 3)") == [["connectSocket", broker.ws], ["send", "auth"], ["send", "join_job"]]
    broker.publish("job-wx", "job_status", {"status": "RUNNING"})
    wait(page, "seqs.length === 1")

    # the broker's close code arrives through onClose({code, reason}) and drives the resume
    broker.evict_user("mini", 4003)
    broker.publish("job-wx", "stage_completed", {"stage": "PLAN"})
    wait(page, "seqs.length === 2 && client.status === 'connected'")
    assert page.evaluate("client.lastClose.code") == 4003

    # app hidden and network lost: the socket is closed with task.close({code, reason}), and
    # nothing is attempted until the network is back and the app shown again
    page.evaluate("wxApp.hide(); wxApp.network(false)")
    wait(page, "client.status === 'reconnecting'")
    assert page.evaluate("calls.filter((call) => call[0] === 'close')") == [["close", 4000, "offline"]]
    broker.publish("job-wx", "job_status", {"status": "DONE"})
    page.evaluate("wxApp.network(true)")
    assert page.evaluate("[client.status, client.online, client.visible]") == ["reconnecting", True, False]
    connects = page.evaluate("calls.filter((call) => call[0] === 'connectSocket').length")
    page.evaluate("wxApp.show()")
    wait(page, "seqs.length === 3 && client.status === 'connected'")
    assert page.evaluate("calls.filter((call) => call[0] === 'connectSocket').length") == connects + 1
    assert page.evaluate("seqs") == [1, 2, 3]

    page.evaluate("client.disconnect()")
    assert page.evaluate("calls[calls.length - 1]") == ["close", 1000, "client disconnect"]
    assert page.evaluate("client.status") == "disconnected"
