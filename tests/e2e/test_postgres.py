"""The broker end to end on PostgreSQL: real server (tests/support/services.py), real clients.

A chosen set of the end-to-end tests runs on both stores (``on_each_store`` in
e2e/test_jobs.py and e2e/test_chat.py); here, what only PostgreSQL does: the ``config``
fixture below points every broker at a fresh database; two brokers share one
database, as two nodes of a cluster do; then the CLI's checks.
"""

import json

import pytest
import trio
import trio_websocket

from broker import serve
from broker.store import chat_sql as chat_store
from broker.store.ownership import StoreInUse
from broker.store.pg_schema import SCHEMA_VERSION
from tests.support import services
from tests.support.clients import chat, token, user
from tests.support.cluster import nodes
from tests.support.helpers import ROOT, postgres_config, recv_json, send_json
from tests.support.processes import broker_cmd
from tests.support.services import free_port

pytestmark = pytest.mark.postgres


@pytest.fixture
def config(tmp_path, pg_url):
    return postgres_config(tmp_path, pg_url)



async def test_the_sqlite_file_is_not_created_on_postgresql(broker, tmp_path):
    await broker.publish("job-1", "job_status", {"status": "RUNNING"})
    assert not (tmp_path / "unused.sqlite3").exists()


@pytest.mark.cluster  # two nodes on a real redis-server
async def test_two_brokers_on_one_database_share_jobs_chat_and_groups(tmp_path, pg_url):
    """Two nodes on one database (and, as every multi-node deployment must, one Redis):
    what one stores, the other serves (history on join, offline delivery, groups), and
    message ids never collide."""
    services.require_redis()
    async with services.redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2) as (node_a, node_b):
        for i in range(1, 4):
            await node_a.publish("job-x", "job_status", {"status": f"S{i}"})
        async with trio_websocket.open_websocket_url(node_b.url() + "?token=demo-token") as ws:
            await recv_json(ws)
            await send_json(ws, {"type": "join_job", "jobId": "job-x", "lastSeq": 1})
            replay = [await recv_json(ws) for _ in range(2)]
            assert [(e["seq"], e["data"]["status"]) for e in replay] == [(2, "S2"), (3, "S3")]
            joined = await recv_json(ws)  # in a cluster it also carries the job's epoch
            assert (joined["type"], joined["jobId"], joined["seq"]) == ("joined", "job-x", 3)

        created = await node_a.groups.create_group("crew", ["ann", "bob", "cy"])
        assert created == ["ann", "bob", "cy"]
        acks = []
        async with user(node_a, "ann") as ann, user(node_b, "cy") as cy:
            for i in range(6):  # both nodes number messages at once, in one conversation and another
                await chat(ann, conversationId="crew", chatType=1, content=f"a{i}", contentType=1)
                await chat(cy, conversationId="crew", chatType=1, content=f"c{i}", contentType=1)
                await chat(cy, recvId="bob", chatType=2, content=f"p{i}", contentType=1)
            with trio.fail_after(10):
                for ws, count in ((ann, 6), (cy, 12)):
                    while count:
                        message = await recv_json(ws)
                        if message.get("type") == "chat_ack":
                            acks.append(message["msgId"])
                            count -= 1
        assert len(set(acks)) == 18
        async with trio_websocket.open_websocket_url(node_b.url(), extra_headers=[
                (b"Authorization", f"Bearer {token('bob')}".encode())]) as bob:
            await recv_json(bob)
            offline = []
            while (message := await recv_json(bob)).get("type") != "offline_complete":
                offline.append(message)
            complete = message
        by_conversation = {}
        for message in offline:
            by_conversation.setdefault(message["conversationId"], []).append(message)
        crew = by_conversation.pop("crew")
        (private,) = by_conversation.values()
        assert sorted(m["content"] for m in crew) == sorted([f"a{i}" for i in range(6)] + [f"c{i}" for i in range(6)])
        assert [m["msgId"] for m in crew] == sorted(m["msgId"] for m in crew)  # one order for every member
        assert [m["content"] for m in private] == [f"p{i}" for i in range(6)]
        assert [m["content"] for m in crew if m["sendId"] == "ann"] == [f"a{i}" for i in range(6)]
        assert complete == {"type": "offline_complete", "count": 18, "truncated": False}


@pytest.mark.cluster  # two nodes on a real redis-server
async def test_a_read_of_a_message_stored_by_another_node_is_accepted(tmp_path, pg_url):
    """Node B's conversation room knows the conversation's last msgId from earlier; a
    message node A stored since is newer: reading it must not be refused as beyond the
    last message."""
    services.require_redis()
    async with services.redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2) as (node_a, node_b):
        async with user(node_b, "bob") as bob, user(node_a, "ann") as ann:
            await chat(bob, recvId="ann", chatType=2, content="first", contentType=1)
            first = await recv_json(bob)
            await chat(bob, type="read", conversationId=first["conversationId"], msgId=first["msgId"])
            await read_position(node_b, "bob", first)  # B's room has looked up the last msgId (and kept it)
            await chat(ann, recvId="bob", chatType=2, content="second", contentType=1)
            while (second := await recv_json(ann)).get("type") != "chat_ack":
                pass  # bob's first message and its read receipt came live, through Redis
            delivered = await recv_json(bob)  # live as well; reading it is what the test is about
            assert (delivered["content"], delivered["msgId"]) == ("second", second["msgId"])
            await chat(bob, type="read", conversationId=second["conversationId"], msgId=second["msgId"])
            with trio.move_on_after(0.5):
                refused = await recv_json(bob)  # nothing answers an accepted read (its receipt goes to ann)
                raise AssertionError(f"the read was answered: {refused}")
            await read_position(node_b, "bob", second)


async def read_position(node, user_id, ack):
    """Wait until ``user_id``'s read position in the acked message's conversation is at it."""
    with trio.fail_after(5):
        while (await chat_store.cursors(node.broker.store, user_id)).get(ack["conversationId"], (0, 0))[1] \
                != ack["msgId"]:
            await trio.sleep(0.01)  # polling the database for the cursor the read moves


async def test_a_second_node_without_a_backplane_is_refused(nursery, config):
    """Two nodes on one database without Redis would each see only their own events
    live (and race for seqs): the second is refused at start, naming the fix. A seq
    already stored is still never overwritten (``test_pg_store``: SeqConflict)."""
    await nursery.start(serve, config)
    with pytest.raises(StoreInUse, match="redis_url"):
        await nursery.start(serve, config)


async def test_postgres_restart_under_chat_load_never_acks_an_unstored_message(nursery, config, postgres_server):
    """A sender keeps a window of messages in flight while PostgreSQL crashes, stays down
    until a send was refused, and comes back: each message gets chat_ack (then it is
    stored) or UNAVAILABLE (send again), and sending works again after the restart."""
    config = config.replace(limits={"message_rate": 10_000.0, "message_burst": 10_000},
                            store={"connect_timeout": 2.0})
    broker = await nursery.start(serve, config)
    acked, refused, conversations = {}, [], set()
    restarted = trio.Event()
    after_restart = 0
    window = trio.Semaphore(4)
    under_load, a_send_refused = trio.Event(), trio.Event()

    async def crash_and_restart():
        await under_load.wait()
        await trio.to_thread.run_sync(postgres_server.stop, "immediate")
        await a_send_refused.wait()  # within connect_timeout (2 s) of the next commit
        await trio.to_thread.run_sync(postgres_server.start)
        restarted.set()

    async with user(broker, "ann") as ann:
        async def receive_answers():
            nonlocal after_restart
            while after_restart < 30:
                answer = await recv_json(ann, timeout=30)
                if answer.get("type") == "chat_ack":
                    acked[answer["clientMsgId"]] = answer["msgId"]
                    conversations.add(answer["conversationId"])
                    after_restart += restarted.is_set()
                    if len(acked) >= 30:
                        under_load.set()
                else:
                    assert answer["code"] == "UNAVAILABLE", answer
                    refused.append(answer["clientMsgId"])
                    a_send_refused.set()
                window.release()
            load.cancel_scope.cancel()

        with trio.fail_after(60):
            async with trio.open_nursery() as load:
                load.start_soon(crash_and_restart)
                load.start_soon(receive_answers)
                for i in range(100_000):
                    await window.acquire()
                    await chat(ann, recvId="bob", chatType=2, content=f"m{i}", contentType=1, clientMsgId=str(i))
        (conversation,) = conversations
        payloads, _ = await chat_store.history(broker.broker.store, conversation, None, 10_000)
    stored = {message["content"][1:]: message["msgId"] for message in map(json.loads, payloads)}
    assert all(stored.get(client_id) == msg_id for client_id, msg_id in acked.items())  # acked means stored
    assert after_restart >= 30 and refused


# -- the CLI's view of PostgreSQL -----------------------------------------------


def test_check_config_reports_postgresql_reachability_and_version(pg_url, postgres_server):
    ok = broker_cmd("check-config", "--config", str(ROOT / "config.toml"), env={"BROKER_STORE_URL": pg_url})
    assert ok.returncode == 0, ok.stderr
    assert f"PostgreSQL at {pg_url}: reachable, server 1" in ok.stdout
    assert "not created yet" in ok.stdout
    down = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/broker"
    bad = broker_cmd("check-config", "--config", str(ROOT / "config.toml"),
                     env={"BROKER_STORE_URL": down, "BROKER_STORE_CONNECT_TIMEOUT": "1"})
    assert bad.returncode == 1 and "UNREACHABLE" in bad.stdout and "refused" in bad.stdout
    assert "hunter2" not in bad.stdout + bad.stderr and "postgres:***@" in bad.stdout


async def test_doctor_reports_postgresql_with_the_walk(broker, pg_url):
    url = f"ws://127.0.0.1:{broker.port}/ws"
    env = {"BROKER_STORE_URL": pg_url}
    result = await trio.to_thread.run_sync(lambda: broker_cmd("doctor", url, "--token", "demo-token",
                                                              "--config", str(ROOT / "config.toml"), env=env))
    assert result.returncode == 0, result.stdout
    line = next(line for line in result.stdout.splitlines() if "postgresql" in line.split()[:2])
    assert line.split()[0] == "ok" and f"schema version {SCHEMA_VERSION}" in line and "server 1" in line
    assert json.dumps(pg_url)[1:-1] in line
