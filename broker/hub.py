"""The hub: who is connected, from where, as whom. Plain sync methods.

In trio, code without an ``await`` cannot be interleaved, so every method here is
atomic with respect to every other task: a login replaces the older connection and
re-routes the user's messages in one step, with no window in between.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

import trio


class Connected(Protocol):
    id: str
    remote_host: str
    user_id: str | None  # set once logged in
    closed: bool

    def evict(self, code: int, reason: str, metric: str) -> None: ...


class Hub:
    def __init__(self) -> None:
        self._sessions: dict[str, Connected] = {}
        self._users: dict[str, dict[str, Connected]] = {}  # user -> {session id: session}
        self._per_host: Counter[str] = Counter()
        self._empty = trio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._sessions)

    # -- connections -------------------------------------------------------

    def register(self, session: Connected) -> None:
        """A connection exists (before authentication): it counts against the limits."""
        self._sessions[session.id] = session
        self._per_host[session.remote_host] += 1
        if self._empty.is_set():
            self._empty = trio.Event()

    def unregister(self, session: Connected) -> None:
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]
            self._per_host[session.remote_host] -= 1
            if self._per_host[session.remote_host] <= 0:
                del self._per_host[session.remote_host]
        sessions = self._users.get(session.user_id) if session.user_id is not None else None
        if sessions is not None and sessions.get(session.id) is session:
            del sessions[session.id]
            if not sessions:
                del self._users[session.user_id]  # type: ignore[arg-type]
        if not self._sessions:
            self._empty.set()

    def connections_from(self, host: str) -> int:
        return self._per_host.get(host, 0)

    def evict_all(self, code: int, reason: str, metric: str) -> None:
        """Ask every connection to close with ``code``; returns at once (see wait_empty)."""
        for session in list(self._sessions.values()):
            session.evict(code, reason, metric)

    async def wait_empty(self) -> None:
        await self._empty.wait()

    def sessions(self) -> list[Connected]:
        return list(self._sessions.values())

    # -- users -------------------------------------------------------------

    def login(self, user_id: str, session: Connected, single: bool) -> list[Connected]:
        """Route ``user_id``'s messages to ``session``. With ``single``, the user's older
        connections are taken off the route and returned (the caller evicts them)."""
        sessions = self._users.setdefault(user_id, {})
        replaced: list[Connected] = []
        if single:
            replaced = [s for s in sessions.values() if s is not session]
            sessions.clear()
        sessions[session.id] = session
        return replaced

    def sessions_of(self, user_id: str) -> list[Connected]:
        sessions = self._users.get(user_id)
        return list(sessions.values()) if sessions else []

    def user_connections(self, user_id: str) -> int:
        return len(self._users.get(user_id, ()))
