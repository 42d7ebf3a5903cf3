"""Store helpers: a PostgreSQL store config for a test server, stores running in a
nursery for the body of an ``async with`` (closed on the way out, errors included), and
the webhook outbox's tables on an in-memory SQLite run inline (virtual-time tests)."""

from __future__ import annotations

import sqlite3
from contextlib import asynccontextmanager

import trio

from broker.config.loader import StoreConfig
from broker.store import outbox_sql


def pg_config(url, **changes):
    return StoreConfig(url=url, **{"connect_timeout": 5.0, **changes})


@asynccontextmanager
async def running(*stores):
    async with trio.open_nursery() as nursery:
        for store in stores:
            await nursery.start(store.run)
        try:
            yield stores if len(stores) > 1 else stores[0]
        finally:
            for store in stores:
                store.close()


class InlineOutboxSqlite:
    """The store's ``read``/``write`` on one in-memory SQLite connection holding the
    webhook outbox's schema, run inline (no store thread: virtual time stays exact)."""

    allocates_msg_ids = False

    def __init__(self) -> None:
        self.db = sqlite3.connect(":memory:")
        for statement in outbox_sql.SQLITE_SCHEMA:
            self.db.execute(statement)

    async def read(self, queries, mail_of=None):
        await trio.lowlevel.checkpoint()
        return [self.db.execute(sql, params).fetchall() for sql, params in queries]

    async def write(self, statements, mail_for=()):
        await trio.lowlevel.checkpoint()
        for sql, rows in statements:
            self.db.executemany(sql, rows)
        self.db.commit()
