import pytest
import trio

from broker.config.loader import StoreConfig
from broker.store import StoredEvent, StoreError
from broker.store.job_sql import job_event_statements
from broker.store.sqlite import Store


def event(seq, kind="job_status"):
    return StoredEvent(seq, kind, b'{"type":"%s","seq":%d}' % (kind.encode(), seq))


async def test_events_survive_reopen_and_history_is_pruned(tmp_path):
    config = StoreConfig(path=str(tmp_path / "db" / "broker.sqlite3"))
    async with trio.open_nursery() as nursery:
        store = Store(config)
        await nursery.start(store.run)
        await store.append_job_events("job-1", [event(1), event(2, "stage_completed"), event(3)], keep=10)
        await store.append_job_events("job-1", [event(4, "stage_completed")], keep=2)
        # pruning runs every PRUNE_EVERY (64) events, not on every write
        await store.append_job_events("job-1", [event(seq, "stage_completed") for seq in range(5, 66)], keep=2)
        store.close()
    store = Store(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        snapshot = await store.load_job("job-1", limit=10)
        empty = await store.load_job("job-2", limit=10)
        store.close()
    assert snapshot.last_seq == 65
    assert [e.seq for e in snapshot.events] == [64, 65]  # history kept to `keep` events
    assert snapshot.latest_status.seq == 3 and snapshot.latest_status.payload == event(3).payload  # survives pruning
    assert empty.last_seq == 0 and empty.events == [] and empty.latest_status is None


async def test_concurrent_writes_are_group_committed(tmp_path):
    store = Store(StoreConfig(path=str(tmp_path / "b.sqlite3")))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        async with trio.open_nursery() as writers:
            for job in range(50):
                writers.start_soon(store.append_job_events, f"job-{job}", [event(1)], 10)
        assert store.batches < 50  # many writes shared a transaction
        snapshots = [await store.load_job(f"job-{job}", 5) for job in range(50)]
        store.close()
    assert all(s.last_seq == 1 for s in snapshots)


async def test_closed_store_refuses_requests(tmp_path):
    store = Store(StoreConfig(path=str(tmp_path / "c.sqlite3")))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        store.close()
    with pytest.raises(StoreError):
        await store.load_job("x", 1)


async def test_sql_error_fails_only_that_batch(tmp_path):
    store = Store(StoreConfig(path=str(tmp_path / "d.sqlite3")))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        with pytest.raises(StoreError):
            await store.write([("INSERT INTO no_such_table VALUES (?)", [(1,)])])
        await store.append_job_events("job", [event(1)], 5)
        assert (await store.load_job("job", 5)).last_seq == 1
        store.close()


async def test_a_bad_write_in_a_batch_fails_only_its_caller(tmp_path):
    store = Store(StoreConfig(path=str(tmp_path / "e.sqlite3")))
    outcomes = {}

    async def good(i):
        await store.append_job_events(f"job-{i}", [event(1)], 5)
        outcomes[i] = "ok"

    async def bad():
        try:
            await store.write([("INSERT INTO no_such_table VALUES (?)", [(1,)])])
        except StoreError:
            outcomes["bad"] = "failed"

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        async with trio.open_nursery() as writers:
            writers.start_soon(good, 0)
            writers.start_soon(bad)
            writers.start_soon(good, 1)
        assert outcomes == {0: "ok", "bad": "failed", 1: "ok"}
        assert (await store.load_job("job-1", 5)).last_seq == 1
        store.close()


async def test_reads_waiting_together_share_one_thread_call_and_keep_their_own_answers(tmp_path):
    store = Store(StoreConfig(path=str(tmp_path / "f.sqlite3")))
    answers = {}

    async def load(i):
        answers[i] = await store.load_job(f"job-{i}", 5)

    async def bad():
        with pytest.raises(StoreError, match="no_such_table"):
            await store.read([("SELECT * FROM no_such_table", ())])
        answers["bad"] = "failed"

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.write([statement for i in range(30) for statement in
                           job_event_statements(f"job-{i}", [event(seq) for seq in range(1, i + 2)], keep=5)])
        before = store.read_batches
        async with trio.open_nursery() as readers:  # all queued before the actor wakes
            for i in range(30):
                readers.start_soon(load, i)
            readers.start_soon(bad)
        assert store.read_batches - before == 1
        # a read after a write sees it, batched or not
        await store.append_job_events("job-0", [event(2)], 5)
        assert (await store.load_job("job-0", 5)).last_seq == 2
        store.close()
    assert answers.pop("bad") == "failed"
    assert {i: (a.last_seq, [e.seq for e in a.events][-1]) for i, a in answers.items()} == {
        i: (i + 1, i + 1) for i in range(30)}
