"""A fault in one request never takes down the store actor others share (issue 20):
a write or read whose data a statement cannot take (here a string that is not UTF-8
encodable, which neither sqlite3 nor psycopg reports as its own error) fails that
request alone, in a batch or not, on both stores."""

from __future__ import annotations

import pytest
import trio

from broker.config.loader import StoreConfig
from broker.store import IdempotencyKeys, StoredEvent, StoreError
from broker.store import chat_sql as chat_store
from broker.store.job_sql import PRUNE_KEYS_BATCH
from broker.store.postgres import PgStore
from broker.store.sqlite import Store
from tests.support.stores import pg_config, running

BAD_TEXT = "\ud800"  # no UTF-8 for it: binding it raises UnicodeEncodeError


def event(seq: int) -> StoredEvent:
    return StoredEvent(seq, "job_status", b'{"type":"job_status","seq":%d}' % seq)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_store(request, tmp_path):
    if request.param == "sqlite":
        return Store(StoreConfig(path=str(tmp_path / "s.sqlite3")))
    return PgStore(pg_config(request.getfixturevalue("pg_url")))


async def test_an_unencodable_write_in_a_batch_fails_only_its_caller(any_store):
    outcomes: dict[object, str] = {}

    async def good(i: int) -> None:
        await store.append_job_events(f"job-{i}", [event(1)], 5)
        outcomes[i] = "ok"

    async def bad(i: int) -> None:
        with pytest.raises(StoreError):
            await store.write(chat_store.create_group_statements(f"group-{i}", BAD_TEXT))
        outcomes[f"bad-{i}"] = "failed"

    async with running(any_store) as store:
        for _ in range(2):  # more often than the actor's restart intensity would allow
            async with trio.open_nursery() as nursery:
                for i in range(5):
                    nursery.start_soon(good, i)
                    nursery.start_soon(bad, i)
            assert [(await store.load_job(f"job-{i}", 5)).last_seq for i in range(5)] == [1] * 5
            for i in range(5):
                await store.write([("DELETE FROM job_events WHERE job_id = ?", [(f"job-{i}",)])])
        await store.append_job_events("after", [event(1)], 5)  # the actor still serves
        assert (await store.load_job("after", 5)).last_seq == 1
    assert outcomes == {**{i: "ok" for i in range(5)}, **{f"bad-{i}": "failed" for i in range(5)}}


async def test_an_unencodable_read_fails_only_its_caller(any_store):
    async def bad() -> None:
        with pytest.raises(StoreError):
            await chat_store.group(store, BAD_TEXT)

    async with running(any_store) as store:
        await store.append_job_events("job", [event(1)], 5)
        for _ in range(6):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bad)
                nursery.start_soon(store.load_job, "job", 5)
        assert (await store.load_job("job", 5)).last_seq == 1


async def expired_keys(store) -> int:
    return (await store.read([("SELECT COUNT(*) FROM job_idempotency_keys WHERE expires_at <= ?", (1000.0,))]))[0][0][0]


@pytest.mark.slow  # seconds of real-time expiry
async def test_expired_idempotency_keys_are_pruned_a_batch_per_publish(any_store):
    """A backlog of expired keys (205 000 on SQLite) costs each pruning publish one
    bounded batch, never the whole backlog at once; successive publishes drain it."""
    backlog = 205_000 if isinstance(any_store, Store) else 3 * PRUNE_KEYS_BATCH + 17
    async with running(any_store) as store:
        await store.write([("INSERT INTO job_idempotency_keys (job_id, idempotency_key, seq, expires_at) "
                            "VALUES (?, ?, ?, ?)", [(f"job-{i % 100}", f"key-{i}", i, 500.0) for i in range(backlog)])])
        seq = 0
        for expected in (backlog - PRUNE_KEYS_BATCH, backlog - 2 * PRUNE_KEYS_BATCH):
            seq += 1
            await store.append_job_events("fresh", [event(seq)], 10,
                                          IdempotencyKeys([(f"new-{seq}", seq)], 1000.0, 2000.0, prune=True))
            assert await expired_keys(store) == expected
        while await expired_keys(store) and seq < backlog // PRUNE_KEYS_BATCH + 5:
            seq += 1
            await store.append_job_events("fresh", [event(seq)], 10, IdempotencyKeys([], 1000.0, 2000.0, prune=True))
        assert await expired_keys(store) == 0
        assert await store.find_idempotency_keys("fresh", ["new-1", "new-2"], 1000.0) == {"new-1": 1, "new-2": 2}
