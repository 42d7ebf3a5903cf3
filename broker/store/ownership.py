"""One store, one owner: a second broker on the same data is refused at start.

Two processes writing one SQLite file sequence the same jobs twice (publishes then fail
with ``UNIQUE constraint failed: job_events.job_id, job_events.seq``), and two nodes on
one PostgreSQL without Redis each see only their own events live. Both start today
without a word, so the store is *claimed* before the broker serves:

* SQLite: an exclusive ``flock`` on ``<file>.lock`` beside the database, holding the
  owner's pid so the refusal can name it. The kernel drops the lock when the process
  dies, kill -9 included: a stale lock file never blocks a restart.
* PostgreSQL: a session advisory lock, keyed by the schema the broker uses, on a
  connection kept for the broker's lifetime.
  A node without Redis takes it exclusively (it must be the only node); nodes with Redis
  take it shared, so any number of them start together but none beside a lone node.

A refusal raises :class:`StoreInUse` (a :class:`StoreError`) with one line that says
what to do; ``broker serve`` prints it and exits non-zero.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import trio

from .actor import StoreError

log = logging.getLogger("broker.store")

NODE_LOCK_CLASS = 0x6E6F  # first key of the node lock; the second is hashtext(current_schema()):
# the schema is the deployment (several brokers may keep theirs in one database)
GUARD_INTERVAL = 10.0  # seconds between checks that the PostgreSQL claim is still held


class StoreInUse(StoreError):
    """Another broker already owns this store; this one must not start on it."""


@contextlib.contextmanager
def sqlite_claim(path: str) -> Iterator[None]:
    """Hold ``<path>.lock`` exclusively for the ``with`` block (":memory:" needs none).
    Raises :class:`StoreInUse` naming the owner's pid when another process (or another
    broker in this process) holds it."""
    if path == ":memory:":
        yield
        return
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreError(f"cannot lock {lock_path}: {exc.strerror}") from None
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise StoreInUse(
                f"the SQLite store {path} is in use by another broker (pid {owner}): stop it, or give this one "
                "its own file ([store] path / BROKER_DB_PATH)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.asynccontextmanager
async def postgres_claim(url: str, where: str, shared: bool, connect_timeout: float) -> AsyncIterator[None]:
    """Hold the node lock on the database at ``url`` for the ``async with`` block: shared
    when the nodes share Redis, else exclusive. Raises :class:`StoreInUse` when the
    other kind holds it. While held, a guard task checks the connection every
    ``GUARD_INTERVAL`` seconds and takes the lock again after PostgreSQL restarted (a
    restart drops it); losing it to another node is logged, not fatal: this node's
    data is still whole, the operator is told. Cancellation closes the connection,
    which releases the lock."""
    import psycopg

    timeout = max(1, round(connect_timeout))

    def connect() -> Any:
        return psycopg.connect(url, autocommit=True, connect_timeout=timeout)

    def take(connection: Any) -> bool:
        function = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
        row = connection.execute(f"SELECT {function}(%s, hashtext(current_schema()))", (NODE_LOCK_CLASS,)).fetchone()
        return bool(row and row[0])

    connection = await trio.to_thread.run_sync(connect)
    try:
        if not await trio.to_thread.run_sync(take, connection):
            raise StoreInUse(
                f"PostgreSQL at {where} is already used by "
                + ("a broker node without Redis: nodes that share a database must all set [cluster] redis_url"
                   " (or redis_sentinels)"
                   if shared else
                   "another broker node: several nodes on one database need Redis ([cluster] redis_url / "
                   "BROKER_CLUSTER_REDIS_URL, or redis_sentinels + redis_master_name), or their rooms diverge")
            )
        async with trio.open_nursery() as nursery:
            holder = _ClaimHolder(connection, connect, take, where)
            nursery.start_soon(holder.guard)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()
                connection = holder.connection
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(connection.close)


class _ClaimHolder:
    """The connection that holds the node lock, renewed after the server dropped it."""

    def __init__(self, connection: Any, connect: Any, take: Any, where: str) -> None:
        self.connection = connection
        self._connect = connect
        self._take = take
        self._where = where

    async def guard(self) -> None:
        warned = False
        while True:
            await trio.sleep(GUARD_INTERVAL)
            try:
                await trio.to_thread.run_sync(lambda: self.connection.execute("SELECT 1"))
                continue
            except Exception:
                pass  # the server went away (restart, failover): take the lock again below
            try:
                fresh = await trio.to_thread.run_sync(self._connect)
            except Exception:
                continue  # still down; the store's own requests report it
            old, self.connection = self.connection, fresh
            await trio.to_thread.run_sync(old.close)
            if await trio.to_thread.run_sync(self._take, fresh):
                warned = False
            elif not warned:
                warned = True
                log.error("PostgreSQL at %s: another broker node took the node lock while the server restarted; "
                          "stop the node that should not run", self._where)
