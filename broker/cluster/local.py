"""The in-process backplane: one node, nothing shared with another process.

It runs whenever ``[cluster] redis_url`` is not set, on either store: SQLite (the
default) or PostgreSQL. Either way the node is the store's only broker (a second one
on the same data is refused at start: :mod:`broker.store.ownership`), so its job
rooms are their jobs' only writers; a seq stored twice anyway fails with
``SeqConflict``. There is no feed and no epoch.

Idempotency keys (``[jobs] idempotency_ttl``): a publish batch with keys first reads
which of them the store remembers (in mailbox order, after every write sent before;
the job's room is its only writer, so nothing can commit the same key in between),
then stores its new events and their keys in one transaction, so a key is remembered
exactly when its event is stored, across restarts. The primary key (job, key) makes
a second writer of the same key (another process on the same database) fail its whole
transaction instead of storing the event twice. Expired keys are deleted with the
first keyed write after each ``idempotency_ttl`` (whole table, by its expiry index):
at most the keys of about two TTLs of publishes are kept.

The logins role only answers: the hub applies single login and the limits itself,
and its methods do not await, so a login's check and take-over cannot interleave
with another login (trio runs code without an ``await`` atomically).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from ..hub.connections import Hub
from ..protocols import JobEventParts
from ..store import AnyStore, IdempotencyKeys, StoredEvent
from ..store.job_sql import KEY_PRUNE_INTERVAL, job_page, job_page_queries
from .interface import ChatFeed, Evictor, JobFeed, JobHistory, LoginClaim, PendingAppend, PresenceFeed, UserTransition


class LocalJobLog:
    """Job events in the store; the job's room is its only writer on this node."""

    def __init__(self, store: AnyStore, idempotency_ttl: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._idempotency_ttl = idempotency_ttl
        self._clock = clock  # wall-clock seconds: key expiry survives a restart
        self._next_key_prune = 0.0

    async def load_job(self, job_id: str, limit: int) -> JobHistory:
        snapshot = await self._store.load_job(job_id, limit)
        return JobHistory(None, snapshot.last_seq, snapshot.events, snapshot.latest_status)

    async def read_job_after(self, job_id: str, after_seq: int, limit: int) -> JobHistory:
        history = await self.load_job(job_id, limit)
        return JobHistory(None, history.last_seq, [e for e in history.events if e.seq > after_seq],
                          history.latest_status)

    async def read_job_page(self, job_id: str, after_seq: int, limit: int, keep: int) -> JobHistory:
        """The server API's history page: events after ``after_seq`` still in history
        (the newest ``keep``), oldest first, at most ``limit``."""
        page = job_page(await self._store.read(job_page_queries(job_id, after_seq, limit)), keep)
        return JobHistory(None, page.last_seq, page.events, page.latest_status)

    async def send_job_events(self, job_id: str, events: list[JobEventParts], keep: int, last_seq: int,
                              on_answer: Callable[[], None]) -> PendingAppend:
        """Stores at once: the answer is there when this returns (``on_answer`` is not
        called), so the room's next append numbers from what this one stored."""
        pending = PendingAppend()
        try:
            pending.resolve(*await self.append_job_events(job_id, events, keep, last_seq))
        except Exception as exc:  # the room answers its publishers with it (a store error, or a bug)
            pending.fail(exc)
        return pending

    async def append_job_events(self, job_id: str, events: list[JobEventParts], keep: int,
                                last_seq: int) -> tuple[str | None, list[StoredEvent | int]]:
        """The job's room is its only writer: seqs continue from ``last_seq``. An event
        whose idempotency key is remembered (or came earlier in ``events``) is not
        stored: its place in the answer holds the seq the key was first stored with."""
        keyed = self._idempotency_ttl > 0 and any(e.idempotency_key is not None for e in events)
        if not keyed:
            stored = [StoredEvent(last_seq + 1 + i, e.type, e.assemble(last_seq + 1 + i, None))
                      for i, e in enumerate(events)]
            await self._store.append_job_events(job_id, stored, keep=keep)
            return None, list(stored)
        now = self._clock()
        wanted = list(dict.fromkeys(e.idempotency_key for e in events if e.idempotency_key is not None))
        known = await self._store.find_idempotency_keys(job_id, wanted, now)
        answer: list[StoredEvent | int] = []
        new: list[StoredEvent] = []
        remember: list[tuple[str, int]] = []
        seq = last_seq
        for part in events:
            key = part.idempotency_key
            if key is not None and key in known:
                answer.append(known[key])
                continue
            seq += 1
            event = StoredEvent(seq, part.type, part.assemble(seq, None))
            new.append(event)
            answer.append(event)
            if key is not None:
                known[key] = seq
                remember.append((key, seq))
        if new:
            prune = now >= self._next_key_prune
            keys = IdempotencyKeys(remember, now, now + self._idempotency_ttl, prune)
            await self._store.append_job_events(job_id, new, keep=keep, keys=keys)
            if prune:  # one batch (PRUNE_KEYS_BATCH) now, the next soon: a backlog drains over many publishes
                self._next_key_prune = now + min(KEY_PRUNE_INTERVAL, self._idempotency_ttl)
        return None, answer


class LocalPresence:
    """Who is in each job room of this node; changes go to the feed at once."""

    clustered = False

    def __init__(self) -> None:
        self._presence: dict[str, Counter[str]] = {}  # job -> user -> connections in its room
        self.feed: PresenceFeed | None = None  # set while the backplane is open

    def presence_update_nowait(self, job_id: str, user_id: str, delta: int) -> None:
        users = self._presence.setdefault(job_id, Counter())
        users[user_id] += delta
        if users[user_id] <= 0:
            del users[user_id]
            if not users:
                del self._presence[job_id]
        if self.feed is not None:
            self.feed.presence_changed([job_id])

    async def job_presence(self, job_id: str) -> set[str]:
        return set(self._presence.get(job_id, ()))


class LocalLogins:
    """One process: the hub applies single login and the limits, and knows who is online.

    User transitions (when :attr:`track_users` is set): the sessions each user has
    claimed and not released, so the claim that takes a user from none to one is its
    online transition and the release that leaves none its offline one. The methods do
    not await, so two logins of one user cannot both see none."""

    clustered = False

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self.track_users = False
        self._claimed: dict[str, set[str]] = {}  # user id -> sessions claimed and not released

    async def claim_login(self, login: str, session_id: str, single: bool, limit: int | None) -> LoginClaim:
        if not (self.track_users and login.startswith("user:")):
            return LoginClaim(True)
        user_id = login[5:]
        sessions = self._claimed.setdefault(user_id, set())
        sessions.add(session_id)
        return LoginClaim(True, transitions=[UserTransition(user_id, True)] if len(sessions) == 1 else [])

    async def release_login(self, login: str, session_id: str) -> list[UserTransition]:
        """The hub forgets the session when it unregisters; here, only the user's count."""
        user_id = login[5:]
        sessions = self._claimed.get(user_id)
        if not login.startswith("user:") or sessions is None or session_id not in sessions:
            return []
        sessions.discard(session_id)
        if sessions:
            return []
        del self._claimed[user_id]
        return [UserTransition(user_id, False)]

    async def sweep_dead_nodes(self) -> list[UserTransition]:
        """One process: no other node can die with this one's users."""
        return []

    async def transitions_recorded(self, transitions: list[UserTransition]) -> None:
        """Nothing is pending anywhere: a transition lives in its caller only."""

    async def users_online(self, user_ids: list[str]) -> list[str]:
        return [user for user in user_ids if self._hub.sessions_of(user)]


class LocalOccupancy:
    """One node: its room is the job's only room, so each crossing of 0 members is the job's."""

    clustered = False

    async def room_changed(self, job_id: str, occupied: bool) -> bool:
        return True

    def room_ended(self, job_id: str) -> None:
        """A failed room's members are gone with it; nothing is shared to update."""

    async def sweep(self) -> list[tuple[str, bool]]:
        """One process: no other node can die with this one's watchers."""
        return []


class LocalChatBus:
    """One process: no other node to tell."""

    clustered = False

    def __init__(self, instance: str) -> None:
        self.instance = instance

    async def publish_chat(self, data: bytes) -> None:
        """Every recipient was delivered to already."""

    async def publish_group_change(self, group_id: str) -> None:
        """The conversation actor made the change itself."""


class LocalBackplane:
    """The five roles of a node that shares nothing through a backplane."""

    clustered = False

    def __init__(self, store: AnyStore, hub: Hub, idempotency_ttl: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.node_id = f"node-{uuid.uuid4().hex[:8]}"
        self.instance = self.node_id
        self.job_log = LocalJobLog(store, idempotency_ttl, clock)
        self.presence = LocalPresence()
        self.logins = LocalLogins(hub)
        self.chat_bus = LocalChatBus(self.instance)
        self.occupancy = LocalOccupancy()

    @asynccontextmanager
    async def open(self, jobs: JobFeed, presence: PresenceFeed, evictor: Evictor,
                   chat: ChatFeed) -> AsyncIterator[None]:
        """Nothing runs in the background; presence changes go to ``presence`` at once."""
        self.presence.feed = presence
        try:
            yield
        finally:
            self.presence.feed = None

    def problem(self) -> str | None:
        return None

    def redis_location(self) -> dict[str, Any] | None:
        return None
