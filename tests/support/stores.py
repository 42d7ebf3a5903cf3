"""Store helpers: a PostgreSQL store config for a test server, and stores running in a
nursery for the body of an ``async with`` (closed on the way out, errors included)."""

from __future__ import annotations

from contextlib import asynccontextmanager

import trio

from broker.config.loader import StoreConfig


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
