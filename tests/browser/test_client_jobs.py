"""Job rooms from a real page: join, the three event types, a late joiner, and resume
with lastSeq across a forced 4003 and a full broker restart (no gap, no duplicate)."""

from tests.support.browser import make_jwt, wait

START_CLIENT = """([url, token, jobId]) => {
  const client = new broker.BrokerClient(url, { token, minDelay: 20, maxDelay: 200 });
  window.client = client;
  window.events = [];
  window.joins = [];
  window.statuses = [];
  client.on("status", (status) => statuses.push(status));
  client.on("frame", (frame) => {
    const message = JSON.parse(frame.data);
    if (frame.dir === "out" && message.type === "join_job") joins.push(message);
  });
  client.joinJob(jobId, {
    onJobStatusUpdate: (data, message) => events.push(["status", message.seq, data.status]),
    onStageCompleted: (data, message) => events.push(["stage", message.seq, data.stage]),
    onJobError: (data, message) => events.push(["error", message.seq, data.error]),
  });
  client.connect();
}"""

SEQS = "() => events.map((event) => event[1])"


def seqs(page):
    return page.evaluate(SEQS)


def wait_seq(page, seq):
    wait(page, "(seq) => events.length && events[events.length - 1][1] >= seq", seq)


def test_job_flow_late_joiner_and_resume_across_4003_and_restart(start_broker, open_page):
    broker = start_broker()
    first = open_page(broker)
    first.evaluate(START_CLIENT, [broker.ws, make_jwt("watcher"), "job-1"])
    wait(first, "joins.length === 1 && client.status === 'connected'")
    wait(first, "() => client.jobs.get('job-1').lastSeq === 0")  # joined: a fresh job has seq 0

    broker.publish("job-1", "job_status", {"status": "RUNNING", "currentStage": "PLAN", "completedStages": []})
    broker.publish("job-1", "stage_completed", {"stage": "PLAN", "nextStage": "OUTLINE"})
    broker.publish("job-1", "job_status", {"status": "RUNNING", "currentStage": "OUTLINE",
                                           "completedStages": ["PLAN"]})
    broker.publish("job-1", "job_error", {"error": "Stage execution failed", "stage": "OUTLINE"})
    wait_seq(first, 4)
    assert first.evaluate("events") == [
        ["status", 1, "RUNNING"], ["stage", 2, "PLAN"], ["status", 3, "RUNNING"], ["error", 4, "Stage execution failed"],
    ]

    # a late joiner gets the latest status at once, not the history
    late = open_page(broker)
    late.evaluate(START_CLIENT, [broker.ws, make_jwt("late"), "job-1"])
    wait(late, "events.length === 1")
    assert late.evaluate("events") == [["status", 3, "RUNNING"]]

    # the broker drops the first page as a slow consumer: it comes back and resumes
    assert broker.evict_user("watcher", 4003) == 1
    broker.publish("job-1", "stage_completed", {"stage": "OUTLINE", "nextStage": "STORYBOARD"})
    broker.publish("job-1", "job_status", {"status": "RUNNING", "currentStage": "STORYBOARD"})
    wait_seq(first, 6)
    wait(first, "joins.length === 2 && client.status === 'connected'")
    assert first.evaluate("client.lastClose.code") == 4003
    assert first.evaluate("joins[1]")["lastSeq"] >= 4
    assert seqs(first) == [1, 2, 3, 4, 5, 6]

    # a full restart: events published while the page is away (on another broker with the
    # same database) are replayed when it comes back to the restarted broker
    port = broker.port
    broker.stop()
    wait(first, "client.status === 'reconnecting'")
    elsewhere = start_broker()
    elsewhere.publish("job-1", "stage_completed", {"stage": "STORYBOARD", "nextStage": "RENDER"})
    elsewhere.publish("job-1", "job_status", {"status": "RUNNING", "currentStage": "RENDER"})
    elsewhere.stop()
    restarted = start_broker(port=port)
    wait_seq(first, 8)
    restarted.publish("job-1", "job_status", {"status": "COMPLETED", "completedStages": ["RENDER"]})
    wait_seq(first, 9)
    assert seqs(first) == list(range(1, 10))
    assert first.evaluate("client.lastClose.code") in (1001, 1006)
    assert first.evaluate("joins[joins.length - 1]")["lastSeq"] == 6
    assert first.evaluate("events[8]") == ["status", 9, "COMPLETED"]
    # the late joiner resumed too: every event after its join, once
    wait_seq(late, 9)
    assert seqs(late) == [3, 5, 6, 7, 8, 9]


def test_a_seq_gap_refetches_the_latest_status(start_broker, open_page):
    """History shorter than the outage: HISTORY_GAP, then the latest status, then live."""
    broker = start_broker(jobs={"history_size": 2})
    page = open_page(broker)
    page.evaluate(START_CLIENT, [broker.ws, make_jwt("watcher"), "job-2"])
    wait(page, "client.status === 'connected' && joins.length === 1")
    broker.publish("job-2", "job_status", {"status": "RUNNING"})
    wait_seq(page, 1)
    page.evaluate("client.disconnect()")
    for stage in ("A", "B", "C"):
        broker.publish("job-2", "stage_completed", {"stage": stage})
    broker.publish("job-2", "job_status", {"status": "RUNNING", "currentStage": "D"})
    broker.publish("job-2", "stage_completed", {"stage": "D"})  # history now holds seqs 5 and 6 only
    page.evaluate("client.connect()")
    wait(page, "joins.length === 2 && client.jobs.get('job-2').lastSeq === 6")
    broker.publish("job-2", "job_status", {"status": "COMPLETED"})
    wait_seq(page, 7)
    assert page.evaluate("events") == [["status", 1, "RUNNING"], ["status", 5, "RUNNING"], ["status", 7, "COMPLETED"]]
