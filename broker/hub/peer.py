"""What every part of the broker may do with a connection, as one Protocol.

Rooms, presence, chat delivery and the hub each need a little of a connection; they
all need this much: its id, whether it is closing, a frame queued without waiting,
and eviction. Each part that needs more extends :class:`Peer` with the few members
that really differ (:class:`~broker.hub.connections.Connected`,
:class:`~broker.chat.delivery.TrackedConnection`, :class:`~broker.chat.replay.ReplayTarget`,
:class:`~broker.chat.conversations.ChatSession`), so no package below the session
imports the concrete :class:`~broker.session.connection.Session`.
"""

from __future__ import annotations

from typing import Protocol


class Peer(Protocol):
    """A connection as the rooms and the hub see it. Every method is sync and never
    waits: a full outbox is the connection's problem (it is evicted), not the caller's."""

    @property
    def id(self) -> str: ...

    @property
    def closed(self) -> bool:
        """True once the connection is closing: rooms drop it, deliveries skip it."""
        ...

    def send_frame_nowait(self, frame: bytes, force: bool = False, now: float | None = None) -> bool:
        """Queue ``frame``; False if the connection is gone (callers then drop it).
        ``force`` bypasses the outbox bound for the few frames that must go out; ``now``
        is the current time, read once per fan-out instead of once per member."""
        ...

    def evict(self, code: int, reason: str, metric: str) -> None:
        """Close with ``code`` and cancel everything the connection runs; idempotent."""
        ...
