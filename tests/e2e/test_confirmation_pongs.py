"""The broker's own confirmation pings do not spend the client's message budget (issue
20): pongs the broker asked for are free; unsolicited pongs and pings still count.

Virtual time with the real broker (SQLite store, chat rooms, sessions) and clients over
in-memory streams. The clock jumps only after the loop has been idle a little while
(``autojump_threshold``), so the store's worker thread finishes before time moves."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing
from wsproto.events import CloseConnection, Pong, TextMessage

from broker import serve
from broker.auth.tokens import issue_token
from tests.support.helpers import JWT_SECRET, RawClient, make_config

MEMBERS = 5
RATE = 12  # messages per second each: under the documented 20/s
SECONDS = 20


@pytest.fixture
def threaded_clock():
    return trio.testing.MockClock(autojump_threshold=0.01)


class LockedStream(trio.abc.Stream):
    """One client's stream written by two tasks (its sender and its pong answers)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.lock = trio.Lock()

    async def send_all(self, data) -> None:
        async with self.lock:
            await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


class Member:
    def __init__(self, broker, name: str) -> None:
        self.broker = broker
        self.name = name
        self.errors: list[dict] = []
        self.closes: list[int] = []
        self.received = 0
        self.client: RawClient | None = None

    async def connect(self, nursery: trio.Nursery) -> None:
        server_end, client_end = trio.testing.memory_stream_pair()
        nursery.start_soon(self.broker.broker.http_front().handle_tcp, server_end)
        self.client = RawClient(LockedStream(client_end))
        token = issue_token(JWT_SECRET, self.name, 3600)
        assert (await self.client.handshake(f"/ws?token={token}"))[0] == 101
        nursery.start_soon(self.read)
        with trio.fail_after(5):
            while not self.ready:
                await trio.sleep(0.01)

    ready = False

    async def read(self) -> None:
        assert self.client is not None
        while True:
            try:
                event = await self.client.next_event()
            except trio.EndOfChannel:
                return
            if isinstance(event, CloseConnection):
                self.closes.append(event.code)
                return
            if isinstance(event, TextMessage):
                message = json.loads(event.data)
                if message.get("type") == "offline_complete":
                    self.ready = True
                elif message.get("type") == "error":
                    self.errors.append(message)
                elif "chatType" in message:
                    self.received += 1

    async def send(self, count: int) -> None:
        assert self.client is not None
        for i in range(count):
            if self.closes:
                return
            await self.client.send_json({"chatType": 1, "conversationId": "team", "content": f"{self.name}-{i}"})
            await trio.sleep(1 / RATE)


@pytest.mark.slow  # seconds of real time at the documented rate
async def test_members_under_the_documented_rate_are_never_rate_limited(tmp_path, threaded_clock):
    config = make_config(tmp_path, store={"path": ":memory:"})
    async with trio.open_nursery() as nursery:
        broker = await nursery.start(serve, config)
        names = [f"member-{i}" for i in range(MEMBERS)]
        await broker.groups.create_group("team", names)
        members = [Member(broker, name) for name in names]
        async with trio.open_nursery() as clients:
            for member in members:
                await member.connect(clients)
            start = trio.current_time()
            async with trio.open_nursery() as senders:
                for member in members:
                    senders.start_soon(member.send, RATE * SECONDS)
            for member in members:
                assert member.errors == [] and member.closes == [], (member.name, member.errors[:2], member.closes)
            assert trio.current_time() - start >= SECONDS - 0.5
            with trio.fail_after(30):
                while any(m.received < (MEMBERS - 1) * RATE * SECONDS for m in members):
                    await trio.sleep(0.1)
            assert all(m.errors == [] and m.closes == [] for m in members)
            # the broker did ask: confirmation pings were answered all along
            assert all(m.client is not None and m.client.pings >= SECONDS for m in members)
            clients.cancel_scope.cancel()
        nursery.cancel_scope.cancel()


async def test_unsolicited_pongs_still_count(tmp_path, threaded_clock):
    config = make_config(tmp_path, store={"path": ":memory:"})
    async with trio.open_nursery() as nursery:
        broker = await nursery.start(serve, config)
        member = Member(broker, "flooder")
        async with trio.open_nursery() as clients:
            await member.connect(clients)
            assert member.client is not None
            flood = b"".join(member.client.ws.send(Pong(b"unsolicited")) for _ in range(200))  # far past the burst
            await member.client.stream.send_all(flood)
            with trio.fail_after(10):
                while not member.closes:
                    await trio.sleep(0.1)
            assert member.errors and member.errors[0]["code"] == "RATE_LIMITED"
            assert member.closes == [4008]
            clients.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
