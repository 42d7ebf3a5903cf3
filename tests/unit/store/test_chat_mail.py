"""The SQLite store's knowledge of who has chat messages waiting (chat_store.WaitingMail):
for a user it says has none, the undelivered query finds none, whatever was committed
before, and a restart loads exactly the users with messages waiting."""

import itertools
import random

import trio

from broker.config.loader import StoreConfig
from broker.protocols.chat import private_conversation_id
from broker.store import chat_sql as chat_store
from broker.store.sqlite import Store

USERS = ["u0", "u1", "u2", "u3", "u4"]
GROUPS = ["g1", "g2"]


class Chatter:
    """Writes through chat_store as the conversation actors do (they name the members)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.ids = itertools.count(1)
        self.members: dict[str, set[str]] = {}

    async def private(self, sender: str, receiver: str, count: int = 1) -> None:
        conversation = private_conversation_id(sender, receiver)
        await self._insert(conversation, sender, count, [(conversation, sender), (conversation, receiver)],
                           (sender, receiver))

    async def group(self, sender: str, group_id: str, count: int = 1) -> None:
        await self._insert(group_id, sender, count, [], tuple(self.members[group_id]))

    async def broadcast(self, sender: str) -> None:
        await self._insert("all", sender, 1, [], ())

    async def _insert(self, conversation, sender, count, pairs, recipients) -> None:
        def render(ids):
            return [chat_store.StoredMessage(i, conversation, sender, b'{"m":%d}' % i) for i in ids]

        await chat_store.insert_messages(self.store, conversation, count, render, pairs,
                                         lambda: next(self.ids), recipients=recipients)

    async def add(self, group_id: str, users: list[str]) -> None:
        if group_id not in self.members:
            await self.store.write(chat_store.create_group_statements(group_id, group_id))
            self.members[group_id] = set()
        await self.store.write(chat_store.add_members_statements(group_id, users), mail_for=users)
        self.members[group_id].update(users)

    async def remove(self, group_id: str, users: list[str]) -> None:
        await self.store.write(chat_store.remove_members_statements(group_id, users))
        self.members[group_id].difference_update(users)

    async def confirm_all(self, user: str) -> None:
        """What a replay's confirmations do: every undelivered message's cursor moves."""
        messages, _ = await chat_store.undelivered(self.store, user, 10_000)
        positions: dict[str, int] = {}
        for m in messages:
            positions[m.conversation_id] = max(positions.get(m.conversation_id, 0), m.msg_id)
        if positions:
            await chat_store.advance_delivered(self.store, user, positions)


class Unmarked:
    """The store's reads, not marked as a login's query: the store learns nothing from them."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def read(self, queries, mail_of=None):
        return await self.store.read(queries)


async def waiting_by_query(store: Store) -> set[str]:
    """The users the undelivered query finds messages for."""
    return {u for u in USERS if (await chat_store.undelivered(Unmarked(store), u, 10))[0]}


async def test_a_user_with_mail_waiting_is_known_until_a_query_finds_none(tmp_path):
    store = Store(StoreConfig(path=str(tmp_path / "mail.sqlite3")))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        chatter = Chatter(store)
        assert store.no_mail_waiting("u1")  # a user never written to
        await chatter.private("u0", "u1")
        assert not store.no_mail_waiting("u1")  # stored while offline: the replay queries
        assert not store.no_mail_waiting("u0")  # named by the write (its own message is no mail)
        assert await waiting_by_query(store) == {"u1"}
        assert (await chat_store.undelivered(store, "u0", 10))[0] == []
        assert store.no_mail_waiting("u0")  # its query found none
        await chatter.confirm_all("u1")  # the replay's confirmation (acks)
        assert not store.no_mail_waiting("u1")  # a query decides ...
        assert (await chat_store.undelivered(store, "u1", 10))[0] == []
        assert store.no_mail_waiting("u1")  # ... and found none
        await chatter.broadcast("u2")  # `all` is never offline mail
        assert store.no_mail_waiting("u1") and await waiting_by_query(store) == set()
        await chatter.add("g1", ["u3", "u4"])
        await chatter.group("u3", "g1")
        assert not store.no_mail_waiting("u4")
        store.close()


async def test_a_failed_write_names_nobody(tmp_path):
    store = Store(StoreConfig(path=str(tmp_path / "fail.sqlite3")))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        try:
            await store.write([("INSERT INTO no_such_table VALUES (?)", [(1,)])], mail_for=["u1"])
        except Exception:
            pass
        assert store.no_mail_waiting("u1")
        store.close()


async def test_restart_loads_exactly_the_users_with_mail_waiting(tmp_path):
    config = StoreConfig(path=str(tmp_path / "restart.sqlite3"))
    store = Store(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        chatter = Chatter(store)
        await chatter.private("u0", "u1", 3)
        await chatter.private("u2", "u3")
        await chatter.confirm_all("u3")
        await chatter.add("g1", ["u0", "u2", "u4"])
        await chatter.group("u0", "g1")
        await chatter.remove("g1", ["u2"])  # removed: its group mail is no longer its
        store.close()
    store = Store(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        assert {u for u in USERS if not store.no_mail_waiting(u)} == {"u1", "u4"}
        assert await waiting_by_query(store) == {"u1", "u4"}
        store.close()


async def test_random_histories_never_hide_waiting_mail(tmp_path):
    """After every step of random chat histories: whoever the store says has no mail
    waiting, the undelivered query agrees; after a restart, the two are the same set."""
    for seed in range(6):
        rng = random.Random(seed)
        config = StoreConfig(path=str(tmp_path / f"random-{seed}.sqlite3"))
        store = Store(config)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            chatter = Chatter(store)
            for _ in range(60):
                sender, other = rng.sample(USERS, 2)
                step = rng.randrange(7)
                if step == 0:
                    await chatter.private(sender, other, rng.randint(1, 3))
                elif step == 1:
                    group_id = rng.choice(GROUPS)
                    await chatter.add(group_id, rng.sample(USERS, rng.randint(1, 3)))
                elif step == 2 and chatter.members.get(group_id := rng.choice(GROUPS)):
                    await chatter.group(rng.choice(sorted(chatter.members[group_id])), group_id)
                elif step == 3 and chatter.members.get(group_id := rng.choice(GROUPS)):
                    await chatter.remove(group_id, [rng.choice(USERS)])
                elif step == 4:
                    await chatter.confirm_all(sender)
                elif step == 5:
                    await chat_store.undelivered(store, sender, 10)  # a login's query
                else:
                    await chatter.broadcast(sender)
                known_none = {u for u in USERS if store.no_mail_waiting(u)}
                assert not known_none & await waiting_by_query(store), (seed, known_none)
            store.close()
        store = Store(config)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            assert {u for u in USERS if not store.no_mail_waiting(u)} == await waiting_by_query(store)
            store.close()
