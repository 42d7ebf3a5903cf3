"""The PostgreSQL store against a real server (tests/support/services.py starts one per session).

The shared SQL (job events, chat messages, cursors, groups) runs on both stores here;
the PostgreSQL-only guarantees are tested with several stores on one database, as
several broker nodes would use it: migrations, message ids, seq conflicts, restarts.
"""

from __future__ import annotations

import psycopg
import pytest
import trio

from broker.config.loader import StoreConfig
from broker.store import IdempotencyKeys, SeqConflict, StoredEvent, StoreError, make_store
from broker.store import chat_sql as chat_store
from broker.store.pg_schema import SCHEMA_VERSION, migrate
from broker.store.postgres import PgStore, display_url
from broker.store.sqlite import Store
from tests.support import services
from tests.support.stores import pg_config, running


def event(seq, kind="job_status"):
    return StoredEvent(seq, kind, b'{"type":"%s","seq":%d}' % (kind.encode(), seq))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_store(request, tmp_path):
    """A store of each kind: the shared SQL must mean the same on both."""
    if request.param == "sqlite":
        return Store(StoreConfig(path=str(tmp_path / "s.sqlite3")))
    return PgStore(pg_config(request.getfixturevalue("pg_url")))


def numbered(conversation, sender, count, counter=None):
    """What a conversation does: number messages (the store's way), render, commit."""
    ids = iter(range(counter or 1, 1 << 62))

    def render(msg_ids):
        return [chat_store.StoredMessage(i, conversation, sender, b'{"msgId":%d}' % i) for i in msg_ids]

    return render, (lambda: next(ids))


# -- the shared SQL, on both stores ----------------------------------------------


async def test_idempotency_keys_are_stored_with_their_events_looked_up_expired_and_pruned(any_store):
    async with running(any_store) as store:
        await store.append_job_events("job-k", [event(1), event(2)], 10, IdempotencyKeys([("a", 1), ("b", 2)], 100.0, 110.0))
        assert await store.find_idempotency_keys("job-k", ["a", "b", "c"], 109.9) == {"a": 1, "b": 2}
        assert await store.find_idempotency_keys("job-other", ["a"], 100.0) == {}
        with pytest.raises(StoreError):  # still remembered: the whole write fails, its event is not stored
            await store.append_job_events("job-k", [event(3)], 10, IdempotencyKeys([("a", 3)], 105.0, 115.0))
        assert (await store.load_job("job-k", 10)).last_seq == 2
        assert await store.find_idempotency_keys("job-k", ["a"], 110.0) == {}  # expired
        # an expired key is taken again; pruning drops every other expired one
        await store.append_job_events("job-k", [event(3)], 10, IdempotencyKeys([("a", 3)], 110.0, 120.0, prune=True))
        remaining = await store.read([("SELECT idempotency_key, seq FROM job_idempotency_keys WHERE job_id = ?",
                                        ("job-k",))])
        assert remaining == [[("a", 3)]]


async def test_job_events_round_trip(any_store):
    async with running(any_store) as store:
        await store.append_job_events("job-1", [event(1), event(2, "stage_completed"), event(3)], keep=10)
        await store.append_job_events("job-1", [event(seq, "stage_completed") for seq in range(4, 66)], keep=2)
        with pytest.raises(SeqConflict):
            await store.append_job_events("job-1", [event(65)], keep=2)  # never silently overwritten
        snapshot = await store.load_job("job-1", limit=10)
        empty = await store.load_job("job-2", limit=10)
    assert snapshot.last_seq == 65
    assert [e.seq for e in snapshot.events] == [64, 65]
    assert snapshot.events[-1].payload == event(65, "stage_completed").payload
    assert snapshot.latest_status.seq == 3 and snapshot.latest_status.payload == event(3).payload
    assert empty.last_seq == 0 and empty.events == [] and empty.latest_status is None


async def test_chat_messages_cursors_and_history_round_trip(any_store):
    async with running(any_store) as store:
        render, allocate = numbered("p:ann|bob", "ann", 3)
        first = await chat_store.insert_messages(store, "p:ann|bob", 3, render, [("p:ann|bob", "ann"), ("p:ann|bob", "bob")],
                                                 allocate)
        render, _ = numbered("p:ann|bob", "bob", 1)
        second = await chat_store.insert_messages(store, "p:ann|bob", 1, render, [], allocate)
        ids = [m.msg_id for m in first + second]
        assert ids == sorted(ids) and len(set(ids)) == 4
        pending, truncated = await chat_store.undelivered(store, "bob", cap=10)
        assert [m.msg_id for m in pending] == ids[:3] and not truncated  # not his own message back
        assert pending[0].payload == b'{"msgId":%d}' % ids[0]
        capped, truncated = await chat_store.undelivered(store, "bob", cap=2)
        assert [m.msg_id for m in capped] == ids[1:3] and truncated  # the newest, oldest first

        await chat_store.advance_delivered(store, "bob", {"p:ann|bob": ids[1]})
        await chat_store.advance_delivered(store, "bob", {"p:ann|bob": ids[0]})  # never backwards
        assert (await chat_store.cursors(store, "bob"))["p:ann|bob"] == (ids[1], 0)
        await chat_store.mark_read(store, "bob", "p:ann|bob", ids[2])
        await chat_store.mark_read(store, "bob", "p:ann|bob", ids[0])
        assert (await chat_store.cursors(store, "bob"))["p:ann|bob"] == (ids[2], ids[2])
        assert (await chat_store.undelivered(store, "bob", cap=10))[0] == []

        page, more = await chat_store.history(store, "p:ann|bob", None, 2)
        assert page == [m.payload for m in first[2:] + second] and more
        page, more = await chat_store.history(store, "p:ann|bob", ids[2], 10)
        assert page == [m.payload for m in first[:2]] and not more
        assert await chat_store.max_msg_id(store) == ids[-1]


async def test_groups_round_trip(any_store):
    async with running(any_store) as store:
        await store.write(chat_store.create_group_statements("team", "The team")
                          + chat_store.add_members_statements("team", ["zed", "Amy", "bob"]))
        await store.write(chat_store.create_group_statements("team", "ignored"))  # exists: kept as it was
        render, allocate = numbered("team", "bob", 2)
        old = await chat_store.insert_messages(store, "team", 2, render, [], allocate)
        await store.write(chat_store.add_members_statements("team", ["cat"]))
        assert await chat_store.group(store, "team") == ("The team", ["Amy", "bob", "cat", "zed"])  # bytewise order
        assert await chat_store.groups_of(store, "cat") == ["team"]
        assert (await chat_store.undelivered(store, "cat", 10))[0] == []  # joined after them: history, not mail
        assert [m.msg_id for m in (await chat_store.undelivered(store, "zed", 10))[0]] == [m.msg_id for m in old]
        await store.write(chat_store.remove_members_statements("team", ["zed"]))
        assert (await chat_store.undelivered(store, "zed", 10))[0] == []
        await store.write(chat_store.delete_group_statements("team"))
        assert await chat_store.group(store, "team") is None
        assert await chat_store.history(store, "team", None, 10) == ([], False)


async def test_a_bad_write_in_a_batch_fails_only_its_caller(any_store):
    outcomes = {}

    async def good(i):
        await store.append_job_events(f"job-{i}", [event(1)], 5)
        outcomes[i] = "ok"

    async def bad():
        with pytest.raises(StoreError):
            await store.write([("INSERT INTO no_such_table VALUES (?)", [(1,)])])
        outcomes["bad"] = "failed"

    async with running(any_store) as store:
        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(good, i)
            nursery.start_soon(bad)
            for i in range(10, 20):
                nursery.start_soon(good, i)
        assert [(await store.load_job(f"job-{i}", 5)).last_seq for i in range(20)] == [1] * 20
    assert outcomes == {**{i: "ok" for i in range(20)}, "bad": "failed"}


# -- PostgreSQL: several nodes on one database -------------------------------------


def test_make_store_picks_postgresql_by_url():
    assert isinstance(make_store(StoreConfig(url="postgresql://broker@db.internal/broker")), PgStore)
    assert type(make_store(StoreConfig(path=":memory:"))) is Store
    assert display_url("postgresql://broker:s3cret@db:5432/b") == "postgresql://broker:***@db:5432/b"


async def test_migrations_are_idempotent_and_safe_when_nodes_start_together(pg_url):
    def run_migration():
        with psycopg.connect(pg_url, autocommit=True) as connection:
            return migrate(connection)

    results = []

    async def node():
        results.append(await trio.to_thread.run_sync(run_migration))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(node)
    assert sorted(results) == [(0, SCHEMA_VERSION)] + [(SCHEMA_VERSION, SCHEMA_VERSION)] * 3  # exactly one migrated
    async with running(PgStore(pg_config(pg_url)), PgStore(pg_config(pg_url))) as (a, b):
        await a.append_job_events("job", [event(1)], 5)
        assert (await b.load_job("job", 5)).last_seq == 1
    with psycopg.connect(pg_url) as connection:
        versions = connection.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


async def test_a_seq_stored_by_another_node_is_a_conflict_not_an_overwrite(pg_url):
    async with running(PgStore(pg_config(pg_url)), PgStore(pg_config(pg_url))) as (a, b):
        await a.append_job_events("job", [event(1), event(2)], 10)
        with pytest.raises(SeqConflict, match="already stored"):
            await b.append_job_events("job", [event(2, "stage_completed"), event(3)], 10)
        snapshot = await b.load_job("job", 10)
    assert [e.seq for e in snapshot.events] == [1, 2] and snapshot.events[1].payload == event(2).payload


async def test_two_nodes_sending_into_the_same_conversations_get_unique_ids_in_commit_order(pg_url):
    """Two stores (two nodes) write messages into the same conversations at once, while a
    reader polls each conversation: ids are unique, each writer's are increasing, and a
    conversation never shows a message with a lower id than one it showed before (its
    messages commit in id order), and each message knows the one committed before it."""
    conversations = [f"g{i}" for i in range(4)]
    acked: dict[tuple[str, str], list[int]] = {}
    links: dict[str, list[tuple[int, int | None]]] = {}  # conversation -> (msgId, the one committed before)
    done = trio.Event()
    violations = []

    async def writer(store, node, conversation):
        for batch in range(15):
            sender = f"{node}-{conversation}"

            def render(ids, sender=sender, conversation=conversation):
                return [chat_store.StoredMessage(i, conversation, sender, b"{}") for i in ids]

            messages = await chat_store.insert_messages(store, conversation, 1 + batch % 3, render, [], _never)
            acked.setdefault((node, conversation), []).extend(m.msg_id for m in messages)
            links.setdefault(conversation, []).extend((m.msg_id, m.prev_msg_id) for m in messages)

    async def watcher(store, conversation):
        seen: list[int] = []
        while not done.is_set():
            (rows,) = await store.read([("SELECT msg_id FROM chat_messages WHERE conversation_id = ? ORDER BY msg_id",
                                         (conversation,))])
            now = [r[0] for r in rows]
            if now[:len(seen)] != seen:
                violations.append((conversation, seen, now))
            seen = now

    with trio.fail_after(60):
        async with running(PgStore(pg_config(pg_url)), PgStore(pg_config(pg_url))) as (a, b):
            async with trio.open_nursery() as watchers:
                for conversation in conversations:
                    watchers.start_soon(watcher, a, conversation)
                async with trio.open_nursery() as writers:
                    for conversation in conversations:
                        writers.start_soon(writer, a, "a", conversation)
                        writers.start_soon(writer, b, "b", conversation)
                done.set()
            stored = {c: await chat_store.history(b, c, None, 1000) for c in conversations}
    all_ids = [i for ids in acked.values() for i in ids]
    assert len(all_ids) == len(set(all_ids)) == 8 * sum(1 + n % 3 for n in range(15))
    assert all(ids == sorted(ids) for ids in acked.values())
    assert violations == []
    for conversation in conversations:  # each message names its predecessor: one chain, whichever node stored it
        chain = sorted(links[conversation])
        assert [prev for _, prev in chain] == [0] + [msg_id for msg_id, _ in chain[:-1]]
        payload_count = len(stored[conversation][0])
        assert payload_count == sum(len(acked[(node, conversation)]) for node in "ab")


def _never() -> int:
    raise AssertionError("PostgreSQL's store numbers messages itself")


async def test_postgres_restart_during_writes_loses_no_acknowledged_write(pg_url, postgres_server):
    """Writers keep sending while the server crashes and comes back: each write is
    either acknowledged and stored, or refused with StoreError; writing works again
    after the restart."""
    acked: list[int] = []
    refused = 0
    restarted = trio.Event()
    under_load = trio.Event()
    after_restart = 0

    async def writer(store, conversation):
        nonlocal refused, after_restart
        while after_restart < 20:
            render, _ = numbered(conversation, "ann", 2)
            try:
                messages = await chat_store.insert_messages(store, conversation, 2, render, [], _never)
            except StoreError:
                refused += 1
                await trio.sleep(0.05)  # a client's retry backoff, not synchronisation
                continue
            acked.extend(m.msg_id for m in messages)
            if len(acked) >= 40:
                under_load.set()
            if restarted.is_set():
                after_restart += 1

    async def crash_and_restart():
        await under_load.wait()
        await trio.to_thread.run_sync(postgres_server.restart, "immediate")
        restarted.set()

    with trio.fail_after(60):
        async with running(PgStore(pg_config(pg_url, connect_timeout=2.0))) as store:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(crash_and_restart)
                for i in range(3):
                    nursery.start_soon(writer, store, f"g{i}")
            (rows,) = await store.read([("SELECT msg_id FROM chat_messages", ())])
    stored = {r[0] for r in rows}
    assert set(acked) <= stored  # nothing acknowledged is missing
    assert after_restart >= 20  # and the store recovered by itself


async def test_writes_resume_at_once_when_the_server_is_back_after_a_long_outage(pg_url, postgres_server):
    """The pool's own reconnection backs off exponentially (attempts 1, 3, 7, 15... s
    after the crash, for up to 5 minutes): a node would stay unable to write for about
    as long again as the outage lasted. Each reconnection gives up after
    ``connect_timeout``; the next write starts a fresh one, so the first write after
    the server is back commits."""
    async def write(store) -> None:
        render, _ = numbered("c", "ann", 1)
        await chat_store.insert_messages(store, "c", 1, render, [], _never)

    with trio.fail_after(30):
        async with running(PgStore(pg_config(pg_url, connect_timeout=0.5))) as store:
            async with trio.open_nursery() as nursery:  # a few connections in the pool
                for _ in range(4):
                    nursery.start_soon(write, store)
            await trio.to_thread.run_sync(postgres_server.stop, "immediate")
            for _ in range(8):  # about 4 s down: each write waits connect_timeout, then is refused
                with pytest.raises(StoreError):
                    await write(store)
            await trio.to_thread.run_sync(postgres_server.start)
            await write(store)


async def test_an_unreachable_server_fails_the_start_with_the_address_but_not_the_password():
    url = f"postgresql://postgres:hunter2@127.0.0.1:{services.free_port()}/nothing"
    with trio.fail_after(30), pytest.raises(StoreError) as caught:
        await PgStore(StoreConfig(url=url, connect_timeout=1.0)).run()
    assert "127.0.0.1" in str(caught.value) and "refused" in str(caught.value)
    assert "hunter2" not in str(caught.value)


async def test_closed_store_refuses_requests(pg_url):
    store = PgStore(pg_config(pg_url))
    async with running(store):
        pass
    with pytest.raises(StoreError):
        await store.load_job("x", 1)
    with pytest.raises(StoreError):
        await store.append_job_events("x", [event(1)], 1)
