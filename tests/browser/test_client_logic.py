"""The client's own rules, with the test playing the server through a scripted socket
(tests/browser/pages/unit.html): backoff, close codes, visibility, the heartbeat watchdog,
getToken per attempt, lastEpoch, a live seq gap, and when it falls back to SSE. Delays are a
few milliseconds and Math.random is fixed, so each delay is read exactly when the client sets
it. Clients are WebSocket-only unless a test asks for the fallback (which needs ``fetch``)."""

import pytest

from tests.support.browser import wait


@pytest.fixture
def page(start_broker, open_page):
    return open_page(start_broker(), "unit.html")


def make_client(page, **options):
    page.evaluate("""(options) => {
      window.tokens = 0;
      window.client = new broker.BrokerClient("ws://broker.test/ws", {
        WebSocket: ScriptedSocket, getToken: () => "token-" + (++tokens), transports: ["websocket"], ...options,
      });
    }""", options)


def fail_and_read_delay(page, code):
    """Close the current attempt with ``code``; the backoff the client chose (ms), exactly:
    the clock is held still while it schedules, so no elapsed millisecond is subtracted."""
    return page.evaluate("""(code) => {
      const realNow = Date.now, now = realNow();
      Date.now = () => now;
      try {
        last().drop(code);
        return client.nextAttemptAt === null ? null : client.nextAttemptAt - now;
      } finally {
        Date.now = realNow;
      }
    }""", code)


def next_attempt(page, count):
    wait(page, f"sockets.length === {count}")


def connect(page, heartbeat_ms=30000):
    """connect(), then the server accepts the socket (getToken runs first: a microtask)."""
    count = page.evaluate("client.connect(); sockets.length")
    next_attempt(page, count + 1)
    page.evaluate(f"last().established({heartbeat_ms})")


def test_backoff_is_exponential_with_full_jitter_and_capped(page):
    page.evaluate("Math.random = () => 1")
    make_client(page, minDelay=5, maxDelay=40)
    page.evaluate("client.connect()")
    delays = []
    for attempt in range(1, 6):
        next_attempt(page, attempt)
        delays.append(fail_and_read_delay(page, 1006))
    assert [round(d / 5) * 5 for d in delays] == [10, 20, 40, 40, 40]
    page.evaluate("Math.random = () => 0.25")  # full jitter: anywhere from 0 to the cap
    next_attempt(page, 6)
    assert fail_and_read_delay(page, 1011) <= 11
    # getToken ran before every attempt; each token went in that socket's first frame
    next_attempt(page, 7)
    page.evaluate("last().open()")
    assert page.evaluate("[tokens, last().sent[0]]") == [7, {"type": "auth", "token": "token-7"}]
    assert page.evaluate("client.status") == "reconnecting"


def test_close_codes_decide(page):
    make_client(page, minDelay=5, maxDelay=10, rateLimitDelay=60_000)
    connect(page)
    assert fail_and_read_delay(page, 4008) >= 60_000  # rate limited: the longer wait
    assert page.evaluate("[client.status, client.lastClose.action]") == ["reconnecting", "wait"]
    for code in (1002, 1007, 1008, 1009, 4001, 1000):
        page.evaluate("client.disconnect()")
        connect(page)
        assert fail_and_read_delay(page, code) is None, code
        assert page.evaluate("client.status") == ("disconnected" if code == 1000 else "error")
    assert page.evaluate("broker.explainClose(4003)") == {
        "code": 4003, "action": "retry", "meaning": "slow consumer: resuming with lastSeq"}
    assert page.evaluate("Object.keys(broker.CLOSE_CODES).map(Number)") == [
        1000, 1001, 1002, 1005, 1006, 1007, 1008, 1009, 1011, 1013, 4000, 4001, 4002, 4003, 4004, 4005, 4008, 4009]


def test_max_attempts_then_error_and_disconnect_stays_disconnected(page):
    make_client(page, minDelay=1, maxDelay=2, maxAttempts=3)
    page.evaluate("client.connect()")
    for attempt in (1, 2):
        next_attempt(page, attempt)
        assert fail_and_read_delay(page, 1006) is not None
    next_attempt(page, 3)
    assert fail_and_read_delay(page, 1006) is None
    assert page.evaluate("[client.status, client.attempts]") == ["error", 3]
    connect(page)
    rejected = page.evaluate("""async () => {
      const pending = client.sendChat({ chatType: 2, recvId: "x", content: "y" });
      client.disconnect();
      return pending.then(() => "resolved", (error) => error.message);
    }""")
    assert rejected == "disconnected"
    assert page.evaluate("[client.status, client.nextAttemptAt, last().closedWith]") == [
        "disconnected", None, [1000, "client disconnect"]]


def test_no_attempt_while_hidden_and_one_at_once_when_shown(page):
    page.evaluate("Math.random = () => 1")
    make_client(page, minDelay=5, maxDelay=10)
    connect(page)
    # the page's own events drive it (visibilitychange, online/offline on window)
    page.evaluate("""() => {
      window.pageVisibility = "hidden";
      Object.defineProperty(document, "visibilityState", { configurable: true, get: () => pageVisibility });
      window.networkEvents = [];
      client.on("offline", () => networkEvents.push("offline"));
      client.on("online", () => networkEvents.push("online"));
      document.dispatchEvent(new Event("visibilitychange"));
    }""")
    assert page.evaluate("client.visible") is False
    fail_and_read_delay(page, 1001)
    # the timer fires, and the hidden page spends nothing: no socket, the attempt waits
    wait(page, "client.nextAttemptAt !== null && client.nextAttemptAt <= Date.now() && client.attempts === 0")
    assert page.evaluate("sockets.length") == 1
    page.evaluate("pageVisibility = 'visible'; document.dispatchEvent(new Event('visibilitychange'))")
    next_attempt(page, 2)  # at once (after getToken), not after a delay
    assert page.evaluate("client.attempts") == 1
    # offline: the socket is closed and nothing is attempted until online
    page.evaluate("last().established(); window.dispatchEvent(new Event('offline'))")
    wait(page, "client.status === 'reconnecting' && last().closedWith !== null")
    assert page.evaluate("last().closedWith") == [4000, "offline"]
    page.evaluate("window.dispatchEvent(new Event('online'))")
    next_attempt(page, 3)
    assert page.evaluate("networkEvents") == ["offline", "online"]


def test_heartbeat_watchdog_pings_then_closes_a_silent_socket(page):
    make_client(page, minDelay=5, maxDelay=10)
    connect(page, heartbeat_ms=20)
    wait(page, "sockets[0].closedWith !== null")
    assert page.evaluate("sockets[0].closedWith") == [4000, "heartbeat watchdog"]
    assert {"type": "ping"} in page.evaluate("sockets[0].sent")
    next_attempt(page, 2)  # and it reconnects


def test_resume_sends_last_epoch_when_offered_and_a_live_gap_is_replayed(page):
    make_client(page, minDelay=1, maxDelay=2)
    page.evaluate("""() => {
      window.seen = [];
      client.joinJob("job-1", { onEvent: (message) => seen.push(message.seq) });
    }""")
    connect(page)
    page.evaluate("""() => {
      const event = (seq) => ({ type: "stage_completed", seq, data: { jobId: "job-1", stage: "S" + seq } });
      window.event = event;
      last().receive({ type: "joined", jobId: "job-1", seq: 0, epoch: "node-a:7" });
      last().receive(event(1));
      last().receive(event(3));  // 2 is missing: the client rejoins from 1 and waits for the replay
    }""")
    assert page.evaluate("last().sent.slice(1)") == [
        {"type": "join_job", "jobId": "job-1"}, {"type": "join_job", "jobId": "job-1", "lastSeq": 1, "lastEpoch": "node-a:7"}]
    page.evaluate("""() => {
      last().receive(event(4));  // still before the replay: dropped
      for (const seq of [2, 3, 4]) last().receive(event(seq));
      last().receive({ type: "joined", jobId: "job-1", seq: 4, epoch: "node-a:7" });
      last().receive(event(4));  // a duplicate
      last().receive(event(5));
    }""")
    assert page.evaluate("seen") == [1, 2, 3, 4, 5]
    page.evaluate("last().drop(1006)")
    next_attempt(page, 2)
    page.evaluate("last().established()")
    assert page.evaluate("last().sent[1]") == {"type": "join_job", "jobId": "job-1", "lastSeq": 5, "lastEpoch": "node-a:7"}


def test_websocket_that_never_opens_falls_back_to_sse_at_once_when_http_reaches_the_path(page):
    """A failed upgrade while plain HTTP to the same path gets the broker's 426: the upgrade
    is stripped on the way, so the next attempt is SSE at once, with the token in a header."""
    page.evaluate("""() => {
      window.fetches = [];
      window.probeStatus = 426;
      window.fakeFetch = (url, init = {}) => {
        fetches.push([url, init.method || "GET", (init.headers || {}).Authorization || null]);
        if (url.endsWith("/ws")) return Promise.resolve({ status: probeStatus });
        return new Promise(() => {});  // the stream: never answers in this test
      };
    }""")
    make_client(page, minDelay=5, maxDelay=10, transports=["websocket", "sse"])
    page.evaluate("client.options.fetch = fakeFetch; window.transports = [];"
                  "client.on('transport', (t) => transports.push(t)); client.connect()")
    next_attempt(page, 1)
    page.evaluate("last().drop(1006)")  # never opened
    wait(page, "client.transport === 'sse' && fetches.length === 2")
    assert page.evaluate("fetches") == [
        ["http://broker.test/ws", "GET", None],  # the probe: no token
        ["http://broker.test/sse", "GET", "Bearer token-2"],  # the stream: token in the header, not the URL
    ]
    assert page.evaluate("[transports, sockets.length, client.status]") == [["sse"], 1, "connecting"]


def test_without_an_http_answer_it_falls_back_after_fallback_after_failures(page):
    page.evaluate("""() => {
      window.fetches = [];
      window.fakeFetch = (url) => {
        fetches.push(url);
        return url.endsWith("/ws") ? Promise.reject(new TypeError("unreachable")) : new Promise(() => {});
      };
    }""")
    make_client(page, minDelay=1, maxDelay=2, transports=["websocket", "sse"], fallbackAfter=3)
    page.evaluate("client.options.fetch = fakeFetch; client.connect()")
    for attempt in (1, 2):
        next_attempt(page, attempt)
        page.evaluate("last().drop(1006)")
        wait(page, f"fetches.length === {attempt}")  # probed (no answer), so: backoff, and WebSocket again
        next_attempt(page, attempt + 1)
        assert page.evaluate("[client.transport, fetches.length]") == ["websocket", attempt]
    next_attempt(page, 3)
    page.evaluate("last().drop(1006)")
    wait(page, "client.transport === 'sse' && fetches[fetches.length - 1].endsWith('/sse')")
    assert page.evaluate("sockets.length") == 3


def test_websocket_only_never_probes(page):
    make_client(page, minDelay=1, maxDelay=2)  # transports: ["websocket"]
    page.evaluate("window.fetched = false; client.options.fetch = () => { fetched = true; }; client.connect()")
    next_attempt(page, 1)
    assert fail_and_read_delay(page, 1006) is not None
    assert page.evaluate("[client.transport, fetched]") == ["websocket", False]


SCRIPTED_SSE = """() => {
  // the server side of an SSE stream, played by the test: a fetch that answers the GET with
  // a stream the test writes to, and records every POST
  window.fetches = [];
  window.streams = [];
  const encoder = new TextEncoder();
  window.fakeFetch = (url, init = {}) => {
    const headers = init.headers || {};
    fetches.push({ url, method: init.method || "GET", body: init.body || null,
                   stream: headers["X-Broker-Stream"] || null, auth: headers.Authorization || null });
    if (url.endsWith("/ws")) return Promise.resolve({ status: 426 });
    if (init.method === "POST") return Promise.resolve(new Response(null, { status: 204 }));
    let controller;
    const body = new ReadableStream({ start: (c) => { controller = c; } });
    const server = {
      write: (text) => controller.enqueue(encoder.encode(text)),
      event: (message) => server.write("data: " + JSON.stringify(message) + "\\n\\n"),
      end: () => controller.close(),
    };
    streams.push(server);
    server.write('event: stream\\ndata: {"streamId":"s' + streams.length + '"}\\n\\n');
    return Promise.resolve(new Response(body, { status: 200, headers: { "Content-Type": "text/event-stream" } }));
  };
}"""


def test_over_sse_pings_are_answered_posts_keep_order_and_websocket_is_tried_again(page):
    page.evaluate(SCRIPTED_SSE)
    make_client(page, minDelay=1, maxDelay=2, transports=["websocket", "sse"], websocketRetryInterval=50)
    page.evaluate("client.options.fetch = fakeFetch; window.transports = [];"
                  "client.on('transport', (t) => transports.push(t)); client.connect()")
    next_attempt(page, 1)
    page.evaluate("last().drop(1006)")  # never opened; plain HTTP gets 426: SSE at once
    wait(page, "streams.length === 1")
    page.evaluate("""() => {
      client.joinJob("job-1", {});
      streams[0].event({ type: "connection_established", clientId: "c", userId: "u", heartbeatInterval: 30000 });
    }""")
    wait(page, "client.status === 'connected'")
    page.evaluate("""() => {
      streams[0].event({ type: "joined", jobId: "job-1", seq: 0 });
      streams[0].event({ type: "job_status", seq: 1, data: { jobId: "job-1", status: "RUNNING" } });
      client.send({ type: "ping" });
      streams[0].write(":ping 1\\n\\n");
    }""")
    wait(page, "fetches.filter((f) => f.method === 'POST').length === 3")
    posts = page.evaluate("fetches.filter((f) => f.method === 'POST')")
    assert [post["body"] for post in posts] == [
        '{"type":"join_job","jobId":"job-1"}', '{"type":"ping"}', '{"type":"pong","seq":1}']
    assert {(post["url"], post["stream"], post["auth"]) for post in posts} == {
        ("http://broker.test/sse", "s1", "Bearer token-2")}
    # websocketRetryInterval later a WebSocket is tried; once it opens, the client moves to it
    next_attempt(page, 2)
    page.evaluate("last().open()")
    wait(page, "client.transport === 'websocket' && sockets.length === 3")
    assert page.evaluate("[sockets[1].closedWith, transports]") == [[1000, "probe"], ["sse", "websocket"]]
    page.evaluate("last().established()")
    wait(page, "client.status === 'connected'")
    assert page.evaluate("last().sent.slice(0, 2)") == [
        {"type": "auth", "token": "token-3"}, {"type": "join_job", "jobId": "job-1", "lastSeq": 1}]  # resumes


# -- what an outside test found the client and the broker disagreeing on (issue 20) ----------


def test_a_null_or_non_object_frame_is_ignored_and_the_next_event_still_counts(page):
    make_client(page)
    page.evaluate("window.seen = []; client.joinJob('job-1', { onEvent: (m) => seen.push(m.seq) })")
    connect(page)
    page.evaluate("""() => {
      last().receive({ type: "joined", jobId: "job-1", seq: 0 });
      for (const raw of ["null", "5", "[1]", '"text"']) last().onmessage({ data: raw });
      last().receive({ type: "job_status", seq: 1, data: { jobId: "job-1", status: "RUNNING" } });
    }""")
    assert page.evaluate("seen") == [1]


def test_invalid_seqs_are_ignored_without_a_rejoin_loop(page):
    make_client(page)
    page.evaluate("window.seen = []; client.joinJob('job-1', { onEvent: (m) => seen.push(m.seq) })")
    connect(page)
    page.evaluate("""() => {
      last().receive({ type: "joined", jobId: "job-1", seq: 0 });
      for (const seq of [-1, 1.5, "2", null]) last().receive({ type: "job_status", seq, data: { jobId: "job-1", status: "X" } });
      last().receive({ type: "joined", jobId: "job-1", seq: -3 });
      last().receive({ type: "job_status", seq: 1, data: { jobId: "job-1", status: "RUNNING" } });
    }""")
    assert page.evaluate("seen") == [1]
    assert page.evaluate("last().sent.filter((m) => m.type === 'join_job').length") == 1  # no rejoin


def test_a_late_joined_with_a_lower_seq_does_not_deliver_events_twice(page):
    make_client(page)
    page.evaluate("window.seen = []; client.joinJob('job-1', { onEvent: (m) => seen.push(m.seq) })")
    connect(page)
    page.evaluate("""() => {
      const event = (seq) => ({ type: "stage_completed", seq, data: { jobId: "job-1", stage: "S" + seq } });
      last().receive({ type: "joined", jobId: "job-1", seq: 0 });
      for (const seq of [1, 2, 3]) last().receive(event(seq));
      last().receive({ type: "joined", jobId: "job-1", seq: 1 });  // a stale answer to an earlier join
      for (const seq of [2, 3, 4]) last().receive(event(seq));
    }""")
    assert page.evaluate("seen") == [1, 2, 3, 4]


def test_a_new_epoch_after_a_gap_takes_the_lower_seq(page):
    make_client(page)
    page.evaluate("window.seen = []; client.joinJob('job-1', { onEvent: (m) => seen.push(m.seq) })")
    connect(page)
    page.evaluate("""() => {
      last().receive({ type: "joined", jobId: "job-1", seq: 7, epoch: "a" });
      last().receive({ type: "error", code: "HISTORY_GAP", jobId: "job-1", message: "epoch a is gone" });
      last().receive({ type: "job_status", seq: 2, epoch: "b", data: { jobId: "job-1", status: "RUNNING" } });
      last().receive({ type: "joined", jobId: "job-1", seq: 2, epoch: "b" });
      last().receive({ type: "job_status", seq: 3, data: { jobId: "job-1", status: "RUNNING" } });
    }""")
    assert page.evaluate("seen") == [2, 3]


def test_a_refused_history_request_rejects_its_promise(page):
    make_client(page)
    connect(page)
    page.evaluate("""() => {
      window.outcome = null;
      client.history("group_1", { limit: 10 }).then(() => { outcome = "resolved"; }, (e) => { outcome = e.code; });
      last().receive({ type: "error", code: "FORBIDDEN", request: "history", conversationId: "group_1",
                       message: "not a member of group_1" });
    }""")
    assert wait(page, "outcome") == "FORBIDDEN"


def test_a_refused_chat_send_rejects_and_is_not_sent_again_after_a_reconnect(page):
    make_client(page, minDelay=1, maxDelay=2)
    connect(page)
    page.evaluate("""() => {
      window.outcome = null;
      client.sendChat({ recvId: "bob", chatType: 2, content: "x".repeat(10) }).then(
        () => { outcome = "acked"; }, (e) => { outcome = e.code; });
      const sent = last().sent[last().sent.length - 1];
      last().receive({ type: "error", code: "MESSAGE_TOO_BIG", clientMsgId: sent.clientMsgId, message: "too big" });
    }""")
    assert wait(page, "outcome") == "MESSAGE_TOO_BIG"
    page.evaluate("last().drop(1006)")
    next_attempt(page, 2)
    page.evaluate("last().established()")
    assert page.evaluate("last().sent.filter((m) => m.chatType).length") == 0


def test_many_jobs_rejoin_paced_below_the_brokers_rate_limit(page):
    make_client(page, joinBurst=20, joinRate=50)
    page.evaluate("for (let i = 0; i < 60; i++) client.joinJob('job-' + i, {})")
    connect(page)
    assert page.evaluate("last().sent.filter((m) => m.type === 'join_job').length") == 20  # the burst
    wait(page, "last().sent.filter((m) => m.type === 'join_job').length === 60")  # then paced, all of them
    assert page.evaluate("new Set(last().sent.filter((m) => m.type === 'join_job').map((m) => m.jobId)).size") == 60


def test_a_server_that_accepts_then_closes_is_backed_off_not_hammered(page):
    page.evaluate("Math.random = () => 1")
    make_client(page, minDelay=5, maxDelay=1000, stableAfter=60000)
    page.evaluate("client.connect()")
    delays = []
    for attempt in range(1, 5):
        next_attempt(page, attempt)
        page.evaluate("last().established()")  # accepted ...
        delays.append(fail_and_read_delay(page, 1011))  # ... and closed at once
    assert [round(d / 5) * 5 for d in delays] == [10, 20, 40, 80]  # growing: attempts did not reset


def test_a_connection_that_held_resets_the_backoff(page):
    page.evaluate("Math.random = () => 1")
    make_client(page, minDelay=5, maxDelay=1000, stableAfter=20)
    page.evaluate("client.connect()")
    next_attempt(page, 1)
    fail_and_read_delay(page, 1006)
    next_attempt(page, 2)
    page.evaluate("last().established()")
    page.wait_for_timeout(60)  # longer than stableAfter: the connection held
    assert round(fail_and_read_delay(page, 1011)) == 5  # minDelay * 2^0: counted from the start again
