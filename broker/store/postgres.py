"""The store on PostgreSQL: one database shared by every node of a cluster.

Same requests as the SQLite store (``write``, ``read``, ``load_job``,
``append_job_events``) plus ``write_numbered`` for chat messages. psycopg's async API
needs asyncio, so the sync API runs in trio worker threads: a ``psycopg_pool`` of
``pool_size`` connections and a :class:`trio.CapacityLimiter` of the same size.

Writes are *group-committed*: the actor takes every write already waiting (up to
``batch_max``) and commits them in one transaction in one thread round trip, then
answers each caller; a caller's ``await`` returns only once its rows are committed.
If the transaction fails on a statement, each write is retried alone, so one bad
write fails only its caller; if it fails on the connection (the server restarted or
went away), every write of the batch fails at once with :class:`StoreError`. A write
is acknowledged only after COMMIT returned: never acknowledged-but-unstored (a COMMIT
cut off by a lost connection is reported as a failure even if the server completed
it: the caller retries, at least once). While the server is unreachable, each write
waits at most ``connect_timeout`` for a connection, then fails; the first one after the
server is back commits (the pool's reconnections give up after ``connect_timeout``, so a
request starts a fresh one: no backoff left over from a long outage). A transaction in
flight is shielded from cancellation. Reads run concurrently on the other connections,
outside the actor; a read sees every write whose ``await`` has returned.

The schema is created and migrated at start (:mod:`.pg_schema`), under an advisory
lock, so nodes starting together migrate once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
import trio

from actors import MailboxClosed, Reply

from ..config.loader import StoreConfig
from .actor import MailboxStore, SeqConflict, StoreError, WriteRequest
from .job_sql import JobEventRequests
from .ownership import postgres_claim
from .pg_schema import SCHEMA_VERSION, migrate, server_version
from .sql import Query, Statement, merge_statements, pyformat

log = logging.getLogger("broker.store")

START_RETRY_DELAY = 0.25  # first wait for a server not reachable at start; doubles each attempt
START_RETRY_MAX_DELAY = 5.0
CONVERSATION_LOCK_CLASS = 0x6368  # first key of a conversation's lock; the second is hashtext(conversation id)

def display_url(url: str) -> str:
    """``url`` without its password, for logs and reports."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _import_psycopg() -> Any:
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError:
        raise StoreError("[store] url needs psycopg: pip install 'trio-broker[cluster]'") from None
    return psycopg


def probe(url: str, timeout: float) -> tuple[str, int]:
    """(server version, schema version) of the database at ``url``; blocking, for
    ``check-config`` and ``doctor``. Raises StoreError saying why it is unreachable."""
    psycopg = _import_psycopg()
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(timeout))) as connection:
            version = server_version(connection)
            if connection.execute("SELECT to_regclass('schema_version') IS NULL").fetchone()[0]:
                return version, 0
            return version, connection.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
    except psycopg.Error as exc:
        raise StoreError(_reason(exc)) from None


@attrs.define
class _NumberedWrite:
    """Statements built from ``count`` fresh chat message ids, with ``lock_key`` locked;
    ``prev``: the conversation's newest msgId before them (0: none), set in the transaction."""

    lock_key: str
    count: int
    build: Callable[[list[int]], list[Statement]]
    reply: Reply[int]
    prev: int = 0


_AnyWrite = WriteRequest | _NumberedWrite


class PgStore(MailboxStore[_NumberedWrite, _AnyWrite], JobEventRequests):
    """Owns the connection pool. Run :meth:`run` as an actor; call the other methods from
    anywhere (``write`` and ``close``: :class:`~broker.store.actor.MailboxStore`)."""

    allocates_msg_ids = True  # every node inserts: ids come from one sequence (write_numbered)

    def __init__(self, config: StoreConfig) -> None:
        super().__init__(config)
        self.server_version = ""
        self._limiter = trio.CapacityLimiter(config.pool_size)
        self._pool: Any = None
        self._psycopg: Any = _import_psycopg()

    # -- ownership ---------------------------------------------------------

    @contextlib.asynccontextmanager
    async def claim(self, shared: bool) -> AsyncIterator[None]:
        """Wait for the server (it may start after the broker: compose and Kubernetes
        start services in any order), then hold the node lock for the block
        (:func:`~broker.store.ownership.postgres_claim`: ``shared`` when the nodes share
        Redis). Raises StoreError, one line, when the server is still unreachable after
        ``connect_timeout`` or another node owns the database."""
        await self._wait_reachable()
        async with postgres_claim(self.config.url, display_url(self.config.url), shared,
                                  self.config.connect_timeout):
            yield

    async def _wait_reachable(self) -> None:
        """Connect (and migrate) with exponential backoff, one log line per failed
        attempt, until ``connect_timeout`` has passed since the first."""
        psycopg = self._psycopg
        where = display_url(self.config.url)
        deadline = trio.current_time() + self.config.connect_timeout
        delay, attempt = START_RETRY_DELAY, 1
        while True:
            try:
                await trio.to_thread.run_sync(self._setup)
                return
            except psycopg.Error as exc:
                left = deadline - trio.current_time()
                if left <= 0:
                    raise StoreError(f"PostgreSQL at {where} not reachable within {self.config.connect_timeout:g}s "
                                     f"([store] connect_timeout): {_reason(exc)}") from None
                wait = min(delay, left)
                log.warning("PostgreSQL at %s not reachable (attempt %d: %s); retrying in %.1fs", where, attempt,
                            _reason(exc), wait)
                await trio.sleep(wait)
                delay, attempt = min(delay * 2, START_RETRY_MAX_DELAY), attempt + 1

    # -- the actor ---------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the pool and migrate the schema (raises StoreError if the server cannot be
        reached within ``connect_timeout``), then commit writes until the mailbox is closed
        for sending (drain: everything queued is still committed) or the actor is cancelled."""
        from psycopg_pool import ConnectionPool, PoolTimeout

        psycopg = self._psycopg
        config = self.config
        where = display_url(config.url)
        # reconnect_timeout: the pool's reconnection backs off exponentially (1, 2, 4... s) for
        # up to 5 minutes by default, so after a long outage a node would wait about as long
        # again before it writes. A reconnection gives up after connect_timeout instead, and the
        # next request starts a fresh one at once.
        pool = ConnectionPool(
            config.url, min_size=1, max_size=config.pool_size, open=False, timeout=config.connect_timeout,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(config.connect_timeout))},
            check=ConnectionPool.check_connection, name="broker-store", reconnect_timeout=config.connect_timeout,
        )
        try:
            found, now = await trio.to_thread.run_sync(self._setup)  # its errors say why, the pool's only "timeout"
            await trio.to_thread.run_sync(lambda: pool.open(wait=True, timeout=config.connect_timeout))
        except (PoolTimeout, psycopg.Error) as exc:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(pool.close)
            raise StoreError(f"PostgreSQL at {where}: {_reason(exc)}") from None
        self._pool = pool
        if found > SCHEMA_VERSION:
            log.warning("database schema version %d is newer than this broker's %d", found, SCHEMA_VERSION)
        log.info("store open at %s (PostgreSQL %s, schema %d%s, pool %d)", where, self.server_version, now,
                 f", migrated from {found}" if found < now else "", config.pool_size)
        try:
            task_status.started()
            while True:
                try:
                    request = await self.inbox.receive()
                except MailboxClosed:
                    return
                run, leftover = self.inbox.receive_run_nowait(request, lambda r: True, config.batch_max)
                assert leftover is None
                await self.commit_batch(run)
        finally:
            self._pool = None
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(pool.close)

    def _setup(self) -> tuple[int, int]:
        timeout = max(1, round(self.config.connect_timeout))
        with self._psycopg.connect(self.config.url, autocommit=True, connect_timeout=timeout) as connection:
            self.server_version = server_version(connection)
            return migrate(connection)

    async def _run_transaction(self, writes: Sequence[_AnyWrite]) -> Exception | None:
        try:
            rows = await trio.to_thread.run_sync(self._transaction, writes, limiter=self._limiter)
        except Exception as exc:  # psycopg's errors (the pool's too), or a ``build`` that raised
            return exc
        self.rows_written += rows
        return None

    def _committed(self, write: _AnyWrite) -> None:
        if isinstance(write, _NumberedWrite):
            write.reply.set(write.prev)
        else:
            write.reply.set(None)

    def _store_error(self, error: Exception) -> StoreError:
        psycopg = self._psycopg
        if isinstance(error, psycopg.errors.UniqueViolation) and getattr(error.diag, "table_name", "") == "job_events":
            return SeqConflict(f"write failed: a job event's seq is already stored ({_reason(error)})")
        return StoreError(f"write failed: {_reason(error)}")

    def _fails_every_write(self, error: Exception) -> bool:
        """The server or the connection failed (retrying write by write would fail the
        same way, each after a wait), as opposed to a statement being refused."""
        psycopg = self._psycopg
        if isinstance(error, psycopg.errors.TransactionRollback):  # deadlock, serialization: worth a retry
            return False
        return isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError))

    def _describe(self, error: Exception) -> str:
        return _reason(error)

    def _transaction(self, writes: Sequence[_AnyWrite]) -> int:
        """One transaction for ``writes`` (blocking, in a worker thread). Numbered writes
        go first, in lock-key order, so two nodes' batches never wait for each other's
        conversation locks in opposite orders. Each learns the conversation's newest
        msgId before its own (``prev``), read under the lock: the link every node orders
        the conversation's live deliveries by (broker/chat/order.py)."""
        numbered = sorted((w for w in writes if isinstance(w, _NumberedWrite)), key=lambda w: w.lock_key)
        merged: list[tuple[str, list[tuple[Any, ...]]]] = []
        newest: dict[str, int] = {}  # lock key -> newest id numbered in this transaction (not inserted yet)
        rows = 0
        with self._pool.connection() as connection, connection.transaction(), connection.cursor() as cursor:
            for write in numbered:
                cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (CONVERSATION_LOCK_CLASS, write.lock_key))
                if write.lock_key in newest:
                    write.prev = newest[write.lock_key]
                else:
                    cursor.execute("SELECT COALESCE(MAX(msg_id), 0) FROM chat_messages WHERE conversation_id = %s",
                                   (write.lock_key,))
                    write.prev = cursor.fetchone()[0]
                cursor.execute("SELECT nextval('chat_msg_id') FROM generate_series(1, %s)", (write.count,))
                ids = sorted(row[0] for row in cursor.fetchall())
                newest[write.lock_key] = ids[-1]
                merge_statements(merged, write.build(ids))
            for plain in writes:
                if isinstance(plain, WriteRequest):
                    merge_statements(merged, plain.statements)
            for sql, params in merged:
                cursor.executemany(pyformat(sql), params)
                rows += len(params)
        return rows

    # -- requests ----------------------------------------------------------

    async def write_numbered(self, lock_key: str, count: int, build: Callable[[list[int]], list[Statement]]) -> int:
        """Commit ``build(ids)`` for ``count`` new ids from the ``chat_msg_id`` sequence,
        ascending, taken in the committing transaction while ``lock_key`` (a conversation)
        is locked: across every node, a conversation's messages commit in id order.
        Returns the conversation's newest msgId before these (0: none).
        ``build`` runs in a worker thread (again if the batch is retried). Raises StoreError."""
        reply: Reply[int] = Reply()
        await self._submit(_NumberedWrite(lock_key, count, build, reply))
        return await reply.wait()

    def no_mail_waiting(self, user_id: str) -> bool:
        """Never known without a query: other nodes store messages in the same database."""
        return False

    async def read(self, queries: Sequence[Query], mail_of: str | None = None) -> list[list[tuple[Any, ...]]]:
        """The rows of each query (``mail_of`` is not used here). Raises StoreError."""
        if self._pool is None:
            raise StoreError("store is closed")
        try:
            return await trio.to_thread.run_sync(self._fetch, queries, limiter=self._limiter)
        except Exception as exc:  # psycopg's (PoolTimeout, PoolClosed too), or a parameter it cannot send
            raise StoreError(f"read failed: {_reason(exc)}") from None

    def _fetch(self, queries: Sequence[Query]) -> list[list[tuple[Any, ...]]]:
        with self._pool.connection() as connection, connection.cursor() as cursor:
            results = []
            for sql, params in queries:
                cursor.execute(pyformat(sql), params)
                results.append(cursor.fetchall())
            return results

    # -- job events --------------------------------------------------------


def _reason(error: BaseException) -> str:
    """One line, without the server's DETAIL (it may quote stored values)."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
