"""Idempotent publishes (docs/PROTOCOL.md section 3.3, ``idempotencyKey``): a retry of a
publish whose answer was lost gets the first attempt's seq and is neither stored nor
delivered again, on one node (the SQLite store, across restarts) and in a cluster (the
Redis publish script, across nodes)."""

from __future__ import annotations

import json

import pytest
import trio
import trio_websocket

from broker import serve
from broker.cluster import LocalJobLog
from broker.config.loader import ClusterConfig, StoreConfig
from broker.protocols import ErrorCode, JobEvent, ProtocolError, decode_publish, job_event_parts
from broker.store import IdempotencyKeys, StoredEvent, StoreError
from broker.store.sqlite import Store
from broker.tools.httpclient import http_request
from tests.support.cluster import NoFeed, nodes
from tests.support.helpers import API_KEY, make_config, recv_json, recv_until, send_json
from tests.support.services import redis_server

# -- the field ----------------------------------------------------------------


def test_key_is_optional_and_kept_on_the_event():
    plain, keyed = decode_publish(b'[{"jobId":"j","type":"job_status","data":{"status":"A"}},'
                                  b'{"jobId":"j","type":"job_status","data":{"status":"B"},"idempotencyKey":"r-1.a:b_C"}]')
    assert plain.idempotency_key is None and keyed.idempotency_key == "r-1.a:b_C"
    # never part of what clients receive
    assert b"idempotencyKey" not in job_event_parts(keyed, 0.0).assemble(1, None)


@pytest.mark.parametrize("key", ["", "x" * 65, "has space", "a/b", "a|b", "é", 17, None, ["k"]])
def test_a_bad_key_is_refused_naming_the_field(key):
    body = json.dumps([{"jobId": "j", "type": "job_status", "data": {"status": "A"}, "idempotencyKey": key}])
    with pytest.raises(ProtocolError) as refused:
        decode_publish(body.encode())
    assert refused.value.code is ErrorCode.BAD_REQUEST
    assert refused.value.message == 'event 0: "idempotencyKey" must be 1-64 characters of letters, digits and ._:-'


# -- one node: the SQLite store ---------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def status(job_id: str, name: str, key: str | None):
    return job_event_parts(JobEvent(job_id, "job_status", {"status": name}, idempotency_key=key), 0.0)


async def append(backplane: LocalJobLog, job_id: str, *events) -> list[StoredEvent | int]:
    snapshot = await backplane.load_job(job_id, 1000)
    _, answer = await backplane.append_job_events(job_id, list(events), 1000, snapshot.last_seq)
    return answer


async def rows(store: Store, job_id: str) -> tuple[list[int], list[tuple]]:
    events, keys = await store.read([
        ("SELECT seq FROM job_events WHERE job_id = ? ORDER BY seq", (job_id,)),
        ("SELECT idempotency_key, seq FROM job_idempotency_keys ORDER BY idempotency_key", ()),
    ])
    return [seq for (seq,) in events], keys


def seqs(answer: list[StoredEvent | int]) -> list[int]:
    return [item if isinstance(item, int) else item.seq for item in answer]


async def test_a_retry_gets_the_first_seq_and_stores_nothing_also_within_one_batch(tmp_path):
    store = Store(StoreConfig(path=str(tmp_path / "b.sqlite3")))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        backplane = LocalJobLog(store, idempotency_ttl=300, clock=Clock())
        first = await append(backplane, "job", status("job", "A", "k1"), status("job", "B", None))
        assert seqs(first) == [1, 2] and all(isinstance(e, StoredEvent) for e in first)
        # the retry alone, then again beside a new event and a repeat within the batch
        assert await append(backplane, "job", status("job", "A", "k1")) == [1]
        answer = await append(backplane, "job", status("job", "C", "k2"), status("job", "A", "k1"),
                              status("job", "C", "k2"), status("job", "D", None))
        assert seqs(answer) == [3, 1, 3, 4]
        assert [type(e) for e in answer] == [StoredEvent, int, int, StoredEvent]
        assert await rows(store, "job") == ([1, 2, 3, 4], [("k1", 1), ("k2", 3)])
        # keys are per job
        assert seqs(await append(backplane, "other", status("other", "A", "k1"))) == [1]
        store.close()


async def test_keys_expire_after_the_ttl_and_expired_rows_are_pruned(tmp_path):
    store = Store(StoreConfig(path=str(tmp_path / "b.sqlite3")))
    clock = Clock()
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        backplane = LocalJobLog(store, idempotency_ttl=10, clock=clock)
        assert seqs(await append(backplane, "job", status("job", "A", "k1"))) == [1]
        clock.now += 9.9
        assert await append(backplane, "job", status("job", "A", "k1")) == [1]  # still remembered
        assert seqs(await append(backplane, "old", status("old", "A", "gone"))) == [1]
        clock.now += 0.2  # k1 is 10.1 s old: a new publish
        assert seqs(await append(backplane, "job", status("job", "A2", "k1"))) == [2]
        assert (await rows(store, "job"))[1] == [("gone", 1), ("k1", 2)]
        clock.now += 10.5  # both expired; the next keyed write prunes every expired key
        assert seqs(await append(backplane, "job", status("job", "B", "k2"))) == [3]
        assert await rows(store, "job") == ([1, 2, 3], [("k2", 3)])
        store.close()


async def test_a_zero_ttl_remembers_nothing(tmp_path):
    store = Store(StoreConfig(path=str(tmp_path / "b.sqlite3")))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        backplane = LocalJobLog(store, idempotency_ttl=0, clock=Clock())
        assert seqs(await append(backplane, "job", status("job", "A", "k1"), status("job", "A", "k1"))) == [1, 2]
        assert await rows(store, "job") == ([1, 2], [])
        store.close()


async def test_a_key_still_remembered_by_another_writer_fails_the_whole_transaction(tmp_path):
    """Two writers of one job in one file (not a supported set-up) never store a key's
    event twice: the second transaction fails whole and stores nothing."""
    store = Store(StoreConfig(path=str(tmp_path / "b.sqlite3")))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        clock = Clock()
        backplane = LocalJobLog(store, idempotency_ttl=300, clock=clock)
        await append(backplane, "job", status("job", "A", "k1"))
        with pytest.raises(StoreError):
            await store.append_job_events("job", [StoredEvent(2, "job_status", b"{}")], 1000,
                                          IdempotencyKeys([("k1", 2)], clock.now, clock.now + 300))
        assert await rows(store, "job") == ([1], [("k1", 1)])
        assert await append(backplane, "job", status("job", "A", "k1")) == [1]
        store.close()


# -- one node, end to end -------------------------------------------------------


async def post(port: int, body: object) -> tuple[int, dict]:
    response = await http_request("POST", f"http://127.0.0.1:{port}/api/publish", body=json.dumps(body).encode(),
                                  headers={"Authorization": f"Bearer {API_KEY}"})
    return response.status, json.loads(response.body)


def event(job_id: str, name: str, key: str | None = None) -> dict:
    body = {"jobId": job_id, "type": "job_status", "data": {"status": name}}
    if key is not None:
        body["idempotencyKey"] = key
    return body


async def test_a_retried_publish_is_answered_with_the_first_seq_delivered_once_and_kept_across_a_restart(tmp_path):
    config = make_config(tmp_path)
    with trio.fail_after(20):
        async with trio.open_nursery() as life:
            broker = await life.start(serve, config)
            port = broker.port
            async with trio_websocket.open_websocket_url(broker.url("/ws?token=demo-token")) as ws:
                await recv_json(ws)
                await send_json(ws, {"type": "join_job", "jobId": "job-i"})
                assert (await recv_until(ws, lambda m: m["type"] == "joined"))["seq"] == 0
                first = await post(port, event("job-i", "RUNNING", "pub-1"))
                assert first == (200, {"status": "ok", "jobId": "job-i", "type": "job_status", "seq": 1})
                assert await post(port, event("job-i", "RUNNING", "pub-1")) == first  # the retry: same answer
                assert await post(port, event("job-i", "OTHER", "pub-2")) == (
                    200, {"status": "ok", "jobId": "job-i", "type": "job_status", "seq": 2})
                # an array: its retried events answered with their first seqs, the new one stored
                status, batch = await post(port, [event("job-i", "RUNNING", "pub-1"), event("job-i", "DONE", "pub-3"),
                                                  event("job-i", "DONE", "pub-3"), event("job-i", "PLAIN")])
                assert status == 200 and [e["seq"] for e in batch["events"]] == [1, 3, 3, 4]
                received = [await recv_json(ws) for _ in range(4)]
                assert [(e["seq"], e["data"]["status"]) for e in received] == [
                    (1, "RUNNING"), (2, "OTHER"), (3, "DONE"), (4, "PLAIN")]  # each once, in order
                # a bad key is refused before anything is stored
                status, refused = await post(port, event("job-i", "BAD", "not ok"))
                assert status == 400 and refused["code"] == "BAD_REQUEST" and "idempotencyKey" in refused["message"]
            await broker.shutdown()
        async with trio.open_nursery() as second_life:
            broker = await second_life.start(serve, config)
            assert await post(broker.port, event("job-i", "RUNNING", "pub-1")) == first  # still known
            assert (await post(broker.port, event("job-i", "NEXT", "pub-4")))[1]["seq"] == 5
            assert (await broker.broker.backplane.job_log.load_job("job-i", 100)).last_seq == 5
            second_life.cancel_scope.cancel()


# -- the cluster: the Redis publish script ------------------------------------------


@pytest.mark.cluster  # a real redis-server
async def test_redis_script_remembers_keys_with_the_ttl_within_a_batch_and_across_pipelined_scripts(tmp_path):
    from broker.cluster.redis import RedisBackplane

    async with redis_server(tmp_path) as redis:
        backplane = RedisBackplane(ClusterConfig(redis_url=redis.url), idempotency_ttl=300)
        feed = NoFeed()
        async with backplane.open(feed, feed, feed, feed):
            nothing = lambda: None  # noqa: E731
            # several scripts in flight on the writer connection at once, the retry behind the first
            sent = [await backplane.job_log.send_job_events("job", [status("job", "A", "k1"), status("job", "B", None)],
                                                    1000, 0, nothing),
                    await backplane.job_log.send_job_events("job", [status("job", "A", "k1"), status("job", "C", "k2"),
                                                            status("job", "C", "k2")], 1000, 0, nothing),
                    await backplane.job_log.send_job_events("job", [status("job", "A", "k1")], 1000, 0, nothing)]
            with trio.fail_after(5):
                for pending in sent:
                    await pending.wait()
            answers = [pending.result()[1] for pending in sent]
            assert [seqs(answer) for answer in answers] == [[1, 2], [1, 3, 3], [1]]
            assert [[type(e) for e in answer] for answer in answers] == [
                [StoredEvent, StoredEvent], [int, StoredEvent, int], [int]]
            history = await backplane.job_log.read_job_after("job", 0, 100)
            assert [e.seq for e in history.events] == [1, 2, 3] and history.last_seq == 3
            ttl = await backplane.node.client.pttl(f"{backplane.node.prefix}:idem:job|k1")
            assert 0 < ttl <= 300_000
        no_memory = RedisBackplane(ClusterConfig(redis_url=redis.url), idempotency_ttl=0)
        async with no_memory.open(feed, feed, feed, feed):
            pending = await no_memory.job_log.send_job_events("job", [status("job", "A", "k1")], 1000, 0, nothing)
            with trio.fail_after(5):
                await pending.wait()
            assert seqs(pending.result()[1]) == [4]  # 0: the key is neither looked up nor set


@pytest.mark.cluster  # a real redis-server
async def test_the_same_key_published_on_two_nodes_at_once_gets_one_seq_and_is_delivered_once(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2) as cluster:
        with trio.fail_after(20):
            sockets = []
            async with trio.open_nursery() as nursery:
                for node in cluster:
                    ws = await trio_websocket.connect_websocket_url(nursery, node.url("/ws?token=demo-token"))
                    sockets.append(ws)
                    await recv_json(ws)
                    await send_json(ws, {"type": "join_job", "jobId": "job-c"})
                    await recv_until(ws, lambda m: m["type"] == "joined")
                answers: dict[str, list[tuple[int, int]]] = {}

                async def publish(port: int, key: str) -> None:
                    status, body = await post(port, event("job-c", f"from-{port}", key))
                    answers.setdefault(key, []).append((status, body.get("seq")))

                for round_ in range(10):
                    async with trio.open_nursery() as racers:  # both nodes at the same instant
                        for node in cluster:
                            racers.start_soon(publish, node.port, f"race-{round_}")
                # both publishers of a key answered 200 with one seq; one seq per key
                assert [answers[f"race-{r}"] for r in range(10)] == [[(200, r + 1)] * 2 for r in range(10)]
                # a plain event behind them: every subscriber got each seq once, then it
                await post(cluster[0].port, event("job-c", "LAST"))
                for ws in sockets:
                    got = [await recv_json(ws) for _ in range(11)]
                    assert [e["seq"] for e in got] == list(range(1, 12)) and got[-1]["data"]["status"] == "LAST"
                    await ws.aclose()
                nursery.cancel_scope.cancel()

