"""The durable store behind one actor: SQLite (the embedded default) and PostgreSQL
(clusters), the callers' side they share (:mod:`.actor`), and the SQL both speak
(:mod:`.sql`, :mod:`.job_sql`, :mod:`.chat_sql`).

:func:`make_store` picks the store a configuration asks for; callers use either
through the same requests and catch :class:`StoreError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

from ..config.loader import StoreConfig
from .actor import SeqConflict as SeqConflict
from .actor import StoreError as StoreError
from .job_sql import IdempotencyKeys as IdempotencyKeys
from .job_sql import JobSnapshot as JobSnapshot
from .job_sql import StoredEvent as StoredEvent
from .sqlite import Store as Store

if TYPE_CHECKING:
    from .postgres import PgStore

AnyStore: TypeAlias = "Store | PgStore"  # what make_store gives: both answer the same requests


def make_store(config: StoreConfig) -> AnyStore:
    """PostgreSQL's store when ``config.url`` is set (psycopg is imported only then),
    else the SQLite one. Nothing is opened until the store's actor runs."""
    if config.url:
        from .postgres import PgStore

        return PgStore(config)
    return Store(config)
