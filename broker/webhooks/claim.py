"""Taking due events out of the outbox: once per cluster.

:class:`LocalClaims` (SQLite: this process is the only sender) reads the heads that
are due and keeps the ones it is sending in memory. :class:`SharedClaims`
(PostgreSQL: every node sends) takes heads with a lease in one statement
(``FOR UPDATE SKIP LOCKED``): no two nodes take the same row, and a row taken by a
node that died is taken by another once ``[webhooks] lease`` has run out. Either
way only the oldest pending row of an (endpoint, key) is ever taken, and it stays
pending (so its key stays blocked) until its outcome is committed: one in flight
per key.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs

from ..store import AnyStore
from ..store import outbox_sql as sql


@attrs.frozen
class OutboxRow:
    id: int
    endpoint: str
    key: str
    webhook_id: str
    event_type: str
    body: bytes
    created_at: float
    attempts: int

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> OutboxRow:
        return cls(int(row[0]), row[1], row[2], row[3], row[4], row[5].encode("utf-8"), float(row[6]), int(row[7]))


class Claims(Protocol):
    async def take(self, now: float, limit: int) -> list[OutboxRow]:
        """Up to ``limit`` due heads, now this node's to send (raises StoreError)."""
        ...

    def release(self, row_id: int) -> None:
        """The row's outcome is committed (or failed to be): it is not this node's any more."""
        ...


class LocalClaims:
    def __init__(self, store: AnyStore) -> None:
        self.store = store
        self.in_flight: set[int] = set()

    async def take(self, now: float, limit: int) -> list[OutboxRow]:
        (rows,) = await self.store.read([sql.heads_query(now, limit + len(self.in_flight))])
        taken = [OutboxRow.from_row(row) for row in rows if row[0] not in self.in_flight][:limit]
        self.in_flight.update(row.id for row in taken)
        return taken

    def release(self, row_id: int) -> None:
        self.in_flight.discard(row_id)


class SharedClaims:
    def __init__(self, store: AnyStore, node: str, lease: float) -> None:
        self.store = store
        self.node = node
        self.lease = lease

    async def take(self, now: float, limit: int) -> list[OutboxRow]:
        (rows,) = await self.store.read([sql.claim_query(self.node, now, now + self.lease, limit)])
        return sorted((OutboxRow.from_row(row) for row in rows), key=lambda row: row.id)

    def release(self, row_id: int) -> None:
        """The lease is cleared by the outcome's write; a row whose write failed is
        taken again when its lease runs out."""
