"""The hub: who is connected. A registry of live sessions, with plain sync methods.

In trio, code without an ``await`` cannot be interleaved, so ``register``,
``unregister`` and ``evict_all`` are atomic with respect to every other task.
"""

from __future__ import annotations

from typing import Protocol

import trio


class Evictable(Protocol):
    id: str

    def evict(self, code: int, reason: str, metric: str) -> None: ...


class Hub:
    def __init__(self) -> None:
        self._sessions: dict[str, Evictable] = {}
        self._empty = trio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._sessions)

    def register(self, session: Evictable) -> None:
        self._sessions[session.id] = session
        if self._empty.is_set():
            self._empty = trio.Event()

    def unregister(self, session: Evictable) -> None:
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]
        if not self._sessions:
            self._empty.set()

    def get(self, session_id: str) -> Evictable | None:
        return self._sessions.get(session_id)

    def evict_all(self, code: int, reason: str, metric: str) -> None:
        """Ask every session to close with ``code``; returns at once (see wait_empty)."""
        for session in list(self._sessions.values()):
            session.evict(code, reason, metric)

    async def wait_empty(self) -> None:
        await self._empty.wait()
