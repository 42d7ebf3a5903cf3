"""Chromium negotiates permessage-deflate with the broker and reads compressed frames
(issue 19 section 2): a large job event arrives whole, compressed once by the broker."""

from tests.support.browser import make_jwt, wait

BIG_EVENT = {"status": "RUNNING", "log": [{"line": i, "text": f"stage {i % 7} finished step {i}"} for i in range(400)]}

WATCH = """([url, token]) => {
  window.events = [];
  const ws = new WebSocket(url);
  window.ws = ws;
  ws.onopen = () => ws.send(JSON.stringify({type: "auth", token}));
  ws.onmessage = (message) => {
    const frame = JSON.parse(message.data);
    if (frame.type === "connection_established") ws.send(JSON.stringify({type: "join_job", jobId: "job-big"}));
    else events.push(frame);
  };
}"""


def test_chromium_receives_a_compressed_broadcast(start_broker, open_page):
    broker = start_broker()
    page = open_page(broker)
    page.evaluate(WATCH, [broker.ws, make_jwt("watcher")])
    wait(page, "events.some((e) => e.type === 'joined')")
    assert "permessage-deflate" in page.evaluate("ws.extensions")
    deflater = broker.handle.broker.deflater
    before = deflater.compressions
    broker.publish("job-big", "job_status", BIG_EVENT)
    event = wait(page, "events.find((e) => e.type === 'job_status')")
    assert event["data"]["log"] == BIG_EVENT["log"]
    assert deflater.compressions == before + 1  # the frame Chromium read was the compressed one
