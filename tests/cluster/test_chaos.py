"""Faults under load, bounded in count and time.

Publish load on a cluster of brokers in one trio program sharing a real redis-server:
the pub/sub connections killed by Redis (``CLIENT KILL TYPE pubsub``), Redis itself
killed (-9) and restarted on its AOF. Each asserts: every acknowledged event reaches
every subscriber, once, in seq order. (A publish whose reply was lost may be stored
without an ack: it arrives too, and the publisher's retry arrives as a new event after it.)

Chat load on real ``broker serve`` processes sharing a redis-server and a PostgreSQL:
PostgreSQL crashed (immediate stop) and started again on its data directory. It asserts:
every send is answered, an ack only for a stored message; every member gets every
stored message of its conversations once, in one order (msgId order); every node sends
again afterwards.
"""

from __future__ import annotations

import itertools
import json
from contextlib import AsyncExitStack, asynccontextmanager

import trio
import trio_websocket

from broker.auth.tokens import issue_token
from broker.cluster import BackplaneUnavailable
from broker.protocols.chat import private_conversation_id
from broker.store import StoreError
from broker.tools.httpclient import http_request
from tests.support.cluster import Subscriber, node_processes, nodes, wait_feed_up
from tests.support.helpers import API_KEY, JWT_SECRET, recv_json, recv_until
from tests.support.services import nginx_front, redis_command, redis_server

EVENTS = 150


class Publisher:
    """Publishes EVENTS events through ``node``, retrying what was not acknowledged."""

    def __init__(self, node, job_id: str, name: str) -> None:
        self.node = node
        self.job_id = job_id
        self.name = name
        self.acked: dict[int, str] = {}
        self.refused = 0

    async def run(self) -> None:
        for i in range(EVENTS):
            while True:
                try:
                    seq = await self.node.publish(self.job_id, "job_status", {"status": f"{self.name}-{i}"})
                    self.acked[seq] = f"{self.name}-{i}"
                    break
                except (StoreError, BackplaneUnavailable):
                    self.refused += 1  # 503 over HTTP: the publisher retries
                    await trio.sleep(0.01)


def check(subscriber: Subscriber, publishers: list[Publisher]) -> None:
    seqs = subscriber.seqs
    assert seqs == sorted(set(seqs)), "duplicated or reordered"
    received = {e["seq"]: e["data"]["status"] for e in subscriber.events}
    for publisher in publishers:
        for seq, status in publisher.acked.items():
            assert received.get(seq) == status, f"acknowledged seq {seq} lost"
        mine = [int(received[s].split("-")[1]) for s in seqs if received[s].startswith(publisher.name + "-")]
        assert mine == sorted(mine), "a publisher's events reordered"
        # a publish whose reply was lost (Redis killed after storing it) is retried by its
        # publisher: the retry is a new event; only one of the two was acknowledged
        assert len(set(publisher.acked.values())) == len(publisher.acked) == EVENTS


async def run_under_load(tmp_path, pg_url, fault) -> tuple[list[Subscriber], list[Publisher], list]:
    """Two nodes, a subscriber and a publisher on each; ``fault(redis, nodes, publishers)``
    runs once a third of the events are acknowledged, while publishing goes on."""
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2) as cluster:
        subscribers = [Subscriber(node.url("/ws?token=demo-token"), "job-c") for node in cluster]
        publishers = [Publisher(node, "job-c", f"p{i}") for i, node in enumerate(cluster)]
        async with trio.open_nursery() as nursery:
            for subscriber in subscribers:
                nursery.start_soon(subscriber.run)
            with trio.fail_after(10):
                for subscriber in subscribers:
                    await subscriber.joined.wait()
            with trio.fail_after(60):
                async with trio.open_nursery() as load:
                    for publisher in publishers:
                        load.start_soon(publisher.run)
                    while sum(len(p.acked) for p in publishers) < len(publishers) * EVENTS // 3:
                        await trio.sleep(0.005)
                    await fault(redis, cluster, publishers)
            last = max(max(p.acked) for p in publishers)
            for subscriber in subscribers:
                with trio.fail_after(30):
                    while not subscriber.events or subscriber.events[-1]["seq"] < last:
                        await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
        return subscribers, publishers, cluster


async def test_pubsub_connections_killed_by_redis_under_load(tmp_path, pg_url):
    async def kill_pubsub(redis, cluster, publishers) -> None:
        # two per node: the backplane's feed and the control feed (broker/cluster/redis_control.py)
        assert (await redis_command(redis.port, "CLIENT", "KILL", "TYPE", "pubsub")) == b":4\r\n"

    subscribers, publishers, cluster = await run_under_load(tmp_path, pg_url, kill_pubsub)
    assert all(node.broker.backplane.reconnects >= 1 for node in cluster)  # the fault did happen
    for subscriber in subscribers:
        check(subscriber, publishers)


async def test_redis_killed_and_restarted_on_its_aof_under_load(tmp_path, pg_url):
    async def restart(redis, cluster, publishers) -> None:
        redis.kill()
        with trio.fail_after(10):  # publishes meanwhile are refused (503), never acknowledged
            while not all(p.refused for p in publishers):
                await trio.sleep(0.005)
        await redis.start()
        for node in cluster:
            await wait_feed_up(node)

    subscribers, publishers, cluster = await run_under_load(tmp_path, pg_url, restart)
    acked = sorted(seq for p in publishers for seq in p.acked)
    assert len(acked) == 2 * EVENTS and acked == sorted(set(acked))
    for subscriber in subscribers:
        check(subscriber, publishers)


# -- PostgreSQL restarted under chat load, on real `broker serve` processes --------

NODE_OF = {"alice": 0, "bob": 0, "carol": 1, "dave": 1}  # each private pair spans the two nodes
PEER = {"alice": "carol", "carol": "alice", "bob": "dave", "dave": "bob"}
GROUP = "crew"
WINDOW = 3  # sends each user keeps in flight
BEFORE_CRASH = 25  # acks per user before PostgreSQL is stopped
AFTER_RESTART = 15  # acks per user, of sends made after PostgreSQL is back
BEFORE, DOWN, BACK = "before", "down", "back"  # when a send was made: PostgreSQL up, stopped, started again
CHAT_NODE_ENV = {
    "BROKER_STORE_CONNECT_TIMEOUT": "1",  # a write waits at most this long for a connection, then UNAVAILABLE
    "BROKER_LIMITS_MESSAGE_RATE": "10000", "BROKER_LIMITS_MESSAGE_BURST": "10000",
    "BROKER_CHAT_OFFLINE_CAP": "10000",  # the replay after reconnecting holds every unconfirmed message
}


def is_chat(message: dict) -> bool:
    return "chatType" in message and "msgId" in message


@asynccontextmanager
async def jwt_chat(port: int, name: str):
    """``name``'s chat connection to the node on ``port``; ``ws.offline``: the offline
    replay (chat messages) that came before ``offline_complete``."""
    headers = [(b"Authorization", f"Bearer {issue_token(JWT_SECRET, name, 600)}".encode())]
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws", extra_headers=headers) as ws:
        established = await recv_json(ws, timeout=10)
        assert established["type"] == "connection_established" and established["userId"] == name, established
        offline = []
        with trio.fail_after(15):
            while (message := json.loads(await ws.get_message())).get("type") != "offline_complete":
                assert is_chat(message), message
                offline.append(message)
        assert not message["truncated"]
        ws.offline = offline
        yield ws


class Progress:
    """Where the test is (``phase``: BEFORE, DOWN, BACK); wakes whoever waits in
    :meth:`until` each time a send is answered."""

    def __init__(self) -> None:
        self.phase = BEFORE
        self._changed = trio.Event()

    def changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, predicate) -> None:
        while not predicate():
            await self._changed.wait()


class ChatSender:
    """A JWT user that keeps WINDOW sends in flight, in turn to its peer on the other node
    and to the group, each with a clientMsgId; it records each send's answer and every
    chat message it receives live."""

    def __init__(self, name: str, progress: Progress) -> None:
        self.name = name
        self.progress = progress
        self.window = trio.Semaphore(WINDOW)
        self.sent: dict[str, tuple[str, str]] = {}  # clientMsgId -> (content, phase when sent)
        self.acked: dict[str, tuple[str, int]] = {}  # clientMsgId -> (conversation, msgId)
        self.refused: dict[str, str] = {}  # clientMsgId -> error code
        self.live: list[dict] = []  # chat messages received, in arrival order
        self.unexpected: list[dict] = []

    @property
    def outstanding(self) -> int:
        return len(self.sent) - len(self.acked) - len(self.refused)

    def acked_in(self, phase: str) -> int:
        return sum(self.sent[client_id][1] == phase for client_id in self.acked)

    def refused_in(self, phase: str) -> int:
        return sum(self.sent[client_id][1] == phase for client_id in self.refused)

    async def send(self, ws) -> None:
        """Send until cancelled, never more than WINDOW unanswered."""
        for i in itertools.count():
            await self.window.acquire()
            client_id, content = str(i), f"{self.name}-{i}"
            self.sent[client_id] = (content, self.progress.phase)
            target = {"recvId": PEER[self.name], "chatType": 2} if i % 2 else {"conversationId": GROUP, "chatType": 1}
            with trio.CancelScope(shield=True):  # recorded as sent: never cancelled half-way
                await ws.send_message(json.dumps({**target, "content": content, "contentType": 1,
                                                  "clientMsgId": client_id}))

    async def receive(self, ws) -> None:
        """Record answers and deliveries until cancelled."""
        while True:
            message = json.loads(await ws.get_message())
            if message.get("type") == "chat_ack":
                self.acked[message["clientMsgId"]] = (message["conversationId"], message["msgId"])
                self.window.release()
                self.progress.changed()
            elif message.get("type") == "error" and message.get("clientMsgId") in self.sent:
                self.refused[message["clientMsgId"]] = message["code"]
                self.window.release()
                self.progress.changed()
            elif is_chat(message):
                self.live.append(message)
                self.progress.changed()
            else:
                self.unexpected.append(message)


def stored_messages(url: str) -> list[tuple[int, str, str, dict]]:
    """(msgId, conversation, sender, payload) of every stored message, by msgId (blocking)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT msg_id, conversation_id, send_id, payload FROM chat_messages ORDER BY msg_id").fetchall()
    return [(msg_id, conversation, sender, json.loads(payload)) for msg_id, conversation, sender, payload in rows]


async def read_history(ws, conversation: str) -> list[dict]:
    """Every message of ``conversation`` through ``history``, oldest first."""
    messages: list[dict] = []
    request: dict = {"type": "history", "conversationId": conversation, "limit": 200}
    while True:
        await ws.send_message(json.dumps(request))
        page = await recv_until(ws, lambda m: m.get("type") == "history", timeout=10)
        messages[:0] = page["messages"]
        if not page["hasMore"]:
            return messages
        request["beforeMsgId"] = page["messages"][0]["msgId"]


async def observe_node(port: int) -> tuple[int, int]:
    """(``/health`` status, status of a job publish) of the node on ``port``."""
    health = await http_request("GET", f"http://127.0.0.1:{port}/health", timeout=5)
    body = json.dumps({"jobId": "job-pg", "type": "job_status", "data": {"status": "RUNNING"}}).encode()
    publish = await http_request("POST", f"http://127.0.0.1:{port}/api/publish", body=body, timeout=5,
                                 headers={"Authorization": f"Bearer {API_KEY}"})
    return health.status, publish.status


async def test_postgres_restarted_under_chat_load_on_node_processes(tmp_path, pg_url, postgres_server):
    """Two `broker serve` processes on one Redis and one PostgreSQL; four JWT users, two
    per node, send private messages across nodes and to a group while PostgreSQL is
    stopped in immediate mode (a crash) and started again on its data directory.
    Each send is answered: chat_ack (then it is in the database) or UNAVAILABLE. Nothing
    acknowledged is lost, duplicated or reordered, for any member, live or replayed after
    a reconnect through nginx, and in ``history`` on any node; every node sends again
    once PostgreSQL is back. ``/health`` stays 200 during the outage and job publishes
    (Redis only) go on: the database is shared by every node, so moving traffic to
    another node would not help (docs/CLUSTER.md, "What happens when X dies")."""
    progress = Progress()
    senders = {name: ChatSender(name, progress) for name in NODE_OF}
    by_node = [[s for s in senders.values() if NODE_OF[s.name] == node] for node in (0, 1)]
    during_outage: list[tuple[int, int]] = []
    async with redis_server(tmp_path) as redis, \
            node_processes(tmp_path, redis.url, pg_url, ["n0", "n1"], CHAT_NODE_ENV) as ports:
        group = json.dumps({"groupId": GROUP, "members": sorted(NODE_OF)}).encode()
        created = await http_request("POST", f"http://127.0.0.1:{ports[0]}/api/groups", body=group,
                                     headers={"Authorization": f"Bearer {API_KEY}"})
        assert created.status == 201
        with trio.fail_after(25):
            async with AsyncExitStack() as connections:
                sockets = {name: await connections.enter_async_context(jwt_chat(ports[NODE_OF[name]], name))
                           for name in NODE_OF}
                async with trio.open_nursery() as clients:
                    for name, sender in senders.items():
                        clients.start_soon(sender.receive, sockets[name])
                    async with trio.open_nursery() as load:
                        for name, sender in senders.items():
                            load.start_soon(sender.send, sockets[name])
                        await progress.until(lambda: all(s.acked_in(BEFORE) >= BEFORE_CRASH for s in senders.values()))
                        await trio.to_thread.run_sync(postgres_server.stop, "immediate")
                        progress.phase = DOWN
                        # sends in flight fail with the connection; each node refuses one made since,
                        # after waiting connect_timeout for a connection
                        def refused_on_each_node() -> bool:
                            return all(sum(s.refused_in(DOWN) for s in users) for users in by_node)

                        with trio.move_on_after(15):
                            await progress.until(refused_on_each_node)
                        assert refused_on_each_node(), "a send made while PostgreSQL was down was not refused"
                        for port in ports:
                            during_outage.append(await observe_node(port))
                        await trio.to_thread.run_sync(postgres_server.start)
                        progress.phase = BACK
                        await progress.until(lambda: all(s.acked_in(BACK) >= AFTER_RESTART for s in senders.values()))
                        load.cancel_scope.cancel()
                    await progress.until(lambda: not any(s.outstanding for s in senders.values()))  # every send answered
                    # and every acknowledged message has reached the other members live: one
                    # still on its way when the readers stop would be delivered (and confirmed by
                    # the client library's automatic pong) unread, so neither seen live nor replayed
                    await progress.until(lambda: all(acked_reached_live(member, senders) for member in senders))
                    clients.cancel_scope.cancel()
            async with nginx_front(tmp_path / "nginx", ports) as front:
                replayed, histories = {}, {}
                for name in NODE_OF:  # round-robin: the users land on either node
                    async with jwt_chat(front, name) as ws:
                        replayed[name] = ws.offline
                        for conversation in (GROUP, private_conversation_id(name, PEER[name])):
                            histories[name, conversation] = await read_history(ws, conversation)
    stored = await trio.to_thread.run_sync(stored_messages, pg_url)

    assert during_outage == [(200, 200), (200, 200)]
    for sender in senders.values():
        assert not sender.unexpected
        assert set(sender.refused.values()) <= {"UNAVAILABLE"}  # docs/PROTOCOL.md 4.2: not stored, send it again
    check_against_the_database(senders, stored, replayed, histories)


def acked_reached_live(member: str, senders: dict[str, ChatSender]) -> bool:
    """Every message the others had acknowledged in ``member``'s conversations has come
    to ``member`` live."""
    conversations = {GROUP, private_conversation_id(member, PEER[member])}
    wanted = {msg_id for sender in senders.values() if sender.name != member
              for conversation, msg_id in sender.acked.values() if conversation in conversations}
    return wanted <= {message["msgId"] for message in senders[member].live}


def check_against_the_database(senders: dict[str, ChatSender], stored: list, replayed: dict, histories: dict) -> None:
    by_id = {msg_id: (conversation, sender, payload) for msg_id, conversation, sender, payload in stored}
    contents = [payload["content"] for _, _, _, payload in stored]
    assert len(contents) == len(set(contents)), "a message stored twice"
    for sender in senders.values():
        mine = []
        for client_id, (conversation, msg_id) in sender.acked.items():
            content = sender.sent[client_id][0]
            assert by_id.get(msg_id) is not None, f"{content} acknowledged as {msg_id} and not stored"
            assert by_id[msg_id][:2] == (conversation, sender.name) and by_id[msg_id][2]["content"] == content
            mine.append((conversation, msg_id, int(client_id)))
        for conversation in {c for c, _, _ in mine}:
            in_commit_order = [i for c, _, i in sorted(mine, key=lambda m: m[1]) if c == conversation]
            assert in_commit_order == sorted(in_commit_order), f"{sender.name}'s sends to {conversation} reordered"
    # every member gets every stored message of its conversations (acknowledged or not:
    # a COMMIT cut off by the crash may have completed), once, in one order: msgId order
    for member, sender in senders.items():
        conversations = {GROUP, private_conversation_id(member, PEER[member])}
        expected = {c: [m for m, (conv, s, _) in by_id.items() if conv == c and s != member] for c in conversations}
        live = {c: [m["msgId"] for m in sender.live if m["conversationId"] == c] for c in conversations}
        replay = {c: [m["msgId"] for m in replayed[member] if m["conversationId"] == c] for c in conversations}
        for conversation in conversations:
            assert live[conversation] == sorted(set(live[conversation])), f"{member} got {conversation} live out of order"
            assert replay[conversation] == sorted(set(replay[conversation])), f"{member}'s replay out of order"
            received = sorted(set(live[conversation]) | set(replay[conversation]))
            assert received == sorted(expected[conversation]), f"{member} is missing messages of {conversation}"
            history = [m["msgId"] for m in histories[member, conversation]]
            assert history == sorted(m for m, (c, _, _) in by_id.items() if c == conversation)
