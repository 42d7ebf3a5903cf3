"""The store actor: the broker's only SQLite connection (WAL).

:func:`broker.store.make_store` picks it (the embedded default) unless ``[store] url``
names PostgreSQL (:mod:`broker.store.postgres`). Both answer the same requests; the SQL
they share is written once (:mod:`broker.store.sql`, :mod:`.job_sql`, :mod:`.chat_sql`).

Every caller talks to it through its bounded mailbox. Writes are *group-committed*:
the actor takes every write already waiting (up to ``batch_max``) and commits them in
one transaction, then answers each caller; a caller's ``await`` returns only once its
rows are committed. Reads run in mailbox order between write batches, so a read sees
every write sent before it.

Reads are batched the same way: the run of reads waiting together (up to
``batch_max``; under a reconnect storm, the offline-replay query of every user with mail waiting)
runs in one worker-thread call, each read answered with its own rows or its own
error. Writes are never overtaken: a batch of either kind ends at the first request
of the other.

A whole transaction, or a whole run of reads, is one ``trio.to_thread`` call on the
sqlite3 connection: one thread round trip, however many statements. sqlite-anyio (an
anyio-compatible SQLite client) has no call that runs a batch: each awaited call is a
round trip of its own, and through it a publish cost twice the server CPU (README,
Stack notes). Only the actor task uses the connection, one call at a time.

As the only writer of its file, it also knows which users may have undelivered chat
messages (:class:`~broker.store.chat_sql.WaitingMail`, ``mail``), in step with its commits
and reads: a login with nothing waiting is answered without a query.

When the mailbox is full, writers wait (backpressure on whoever is publishing).
A transaction (or a run of reads) in flight is shielded from cancellation, so a write
is either committed and acknowledged, or not acknowledged. SQLite errors fail the affected callers with
:class:`StoreError`; the actor carries on. So does any other exception a statement
raises for one request's data (a string that cannot be encoded, say): the batch is
retried write by write and only that request fails.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, TypeGuard

import attrs
import trio

from actors import MailboxClosed, Reply

from ..config.loader import StoreConfig
from .actor import MailboxStore, SeqConflict, StoreError, WriteRequest  # the errors: imported from here too
from .chat_sql import WAITING_USERS_SQL, WaitingMail
from .job_sql import JobEventRequests
from .outbox_sql import SQLITE_SCHEMA as OUTBOX_SCHEMA
from .ownership import sqlite_claim
from .sql import Query, merge_statements

log = logging.getLogger("broker.store")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS job_events (
        job_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (job_id, seq)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS job_latest_status (
        job_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        payload TEXT NOT NULL
    ) WITHOUT ROWID""",
    # a publish's idempotencyKey -> the seq it was first stored with, until expires_at
    """CREATE TABLE IF NOT EXISTS job_idempotency_keys (
        job_id TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        seq INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (job_id, idempotency_key)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS job_idempotency_keys_by_expiry ON job_idempotency_keys (expires_at)",
    # chat: every message once; per (user, conversation) delivery and read positions
    """CREATE TABLE IF NOT EXISTS chat_messages (
        msg_id INTEGER PRIMARY KEY,
        conversation_id TEXT NOT NULL,
        send_id TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS chat_messages_by_conversation ON chat_messages (conversation_id, msg_id)",
    """CREATE TABLE IF NOT EXISTS chat_cursors (
        user_id TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        last_delivered INTEGER NOT NULL DEFAULT 0,
        last_read INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user_id, conversation_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS chat_groups (
        group_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS chat_group_members (
        group_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        added_at REAL NOT NULL,
        PRIMARY KEY (group_id, user_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS chat_group_members_by_user ON chat_group_members (user_id, group_id)",
    *OUTBOX_SCHEMA,  # webhooks (broker/webhooks)
]



def _is_write(request: WriteRequest | _Read) -> TypeGuard[WriteRequest]:
    return isinstance(request, WriteRequest)


def _is_read(request: WriteRequest | _Read) -> TypeGuard[_Read]:
    return isinstance(request, _Read)


@attrs.frozen
class _Read:
    queries: Sequence[Query]
    reply: Reply[list[list[tuple[Any, ...]]]]
    mail_of: str | None = None  # a user's undelivered-messages query: no row, no mail


class Store(MailboxStore[_Read, WriteRequest], JobEventRequests):
    """Owns the database. Run :meth:`run` as an actor; call the other methods from anywhere
    (``write`` and ``close``: :class:`~broker.store.actor.MailboxStore`)."""

    allocates_msg_ids = False  # chat numbers its messages itself (one process owns the file)

    def __init__(self, config: StoreConfig) -> None:
        super().__init__(config)
        self.read_batches = 0  # worker-thread calls that answered reads
        self.mail: WaitingMail | None = None  # set by run(): who may have undelivered chat messages
        self._db: sqlite3.Connection | None = None  # set by run(): the connection transactions run on

    # -- ownership ---------------------------------------------------------

    @contextlib.asynccontextmanager
    async def claim(self, shared: bool = False) -> AsyncIterator[None]:
        """Hold the database file for the block (:func:`~broker.store.ownership.sqlite_claim`);
        raises StoreInUse, naming the other process, when another broker holds it. A
        SQLite file is never shared by nodes (``shared`` is accepted for the common call)."""
        with sqlite_claim(self.config.path):
            yield

    # -- the actor ---------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the database, then serve requests until the mailbox is closed for sending
        (drain: everything queued is still committed) or the actor is cancelled."""
        self.mail = None
        db, waiting = await trio.to_thread.run_sync(self._connect)
        self._db = db
        self.mail = WaitingMail(waiting)
        log.info("store open at %s (WAL, synchronous=%s; %d users with chat messages waiting)",
                 self.config.path, self.config.synchronous, len(waiting))
        try:
            task_status.started()
            while True:
                request: WriteRequest | _Read | None
                try:
                    request = await self.inbox.receive()
                except MailboxClosed:
                    return
                while request is not None:
                    if isinstance(request, WriteRequest):
                        writes, request = self.inbox.receive_run_nowait(
                            request, _is_write, self.config.batch_max
                        )
                        await self.commit_batch(writes)
                    else:
                        reads, request = self.inbox.receive_run_nowait(
                            request, _is_read, self.config.batch_max
                        )
                        await self._read(reads)
        finally:
            self._db = self.mail = None
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(db.close)

    def _connect(self) -> tuple[sqlite3.Connection, list[str]]:
        """Open the database and make the schema; the users with chat messages waiting
        (in a worker thread)."""
        path = self.config.path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False)  # used from worker threads, one call at a time
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.config.synchronous}")
            db.execute("PRAGMA busy_timeout=5000")
            for statement in SCHEMA:
                db.execute(statement)
            db.commit()
            waiting = [row[0] for row in db.execute(WAITING_USERS_SQL)]
        except BaseException:
            db.close()
            raise
        return db, waiting

    async def _run_transaction(self, writes: Sequence[WriteRequest]) -> Exception | None:
        merged: list[tuple[str, list[tuple[Any, ...]]]] = []
        for write in writes:
            merge_statements(merged, write.statements)
        error = await trio.to_thread.run_sync(self._transaction, merged)
        if error is None:
            self.rows_written += sum(len(rows) for _, rows in merged)
        return error

    def _committed(self, write: WriteRequest) -> None:
        if write.mail_for and self.mail is not None:
            self.mail.add(write.mail_for)  # before anyone hears of the commit
        write.reply.set(None)

    def _store_error(self, error: Exception) -> StoreError:
        if isinstance(error, sqlite3.IntegrityError) and "job_events" in str(error):
            return SeqConflict(f"write failed: a job event's seq is already stored ({error})")
        return StoreError(f"write failed: {error}")

    def _transaction(self, statements: list[tuple[str, list[tuple[Any, ...]]]]) -> Exception | None:
        """Run ``statements`` and commit, or roll back and return the error (in a worker
        thread: the whole transaction is one round trip). Any exception, not only
        sqlite3's (a value that cannot be bound, such as a string that is not UTF-8
        encodable), is the request's failure, never the actor's."""
        db = self._db
        assert db is not None
        try:
            for sql, rows in statements:
                db.executemany(sql, rows)
            db.commit()
        except Exception as exc:
            db.rollback()
            return exc
        return None

    async def _read(self, reads: list[_Read]) -> None:
        """Answer each read with its rows, or fail it alone with StoreError."""
        with trio.CancelScope(shield=True):  # the thread runs to the end anyway: answer everyone
            results = await trio.to_thread.run_sync(self._queries, [read.queries for read in reads])
        self.read_batches += 1
        for read, result in zip(reads, results, strict=True):
            if isinstance(result, Exception):
                log.error("store: read failed: %s", result)
                read.reply.fail(StoreError(f"read failed: {result}"))
            else:
                if read.mail_of is not None and not result[0] and self.mail is not None:
                    self.mail.found_none(read.mail_of)  # no commit since the query ran
                read.reply.set(result)

    def _queries(self, reads: list[Sequence[Query]]) -> list[list[list[tuple[Any, ...]]] | Exception]:
        """The rows of each read's queries, or the error that stopped that read, whatever
        its kind (in a worker thread: the whole run is one round trip)."""
        db = self._db
        assert db is not None
        results: list[list[list[tuple[Any, ...]]] | Exception] = []
        for queries in reads:
            try:
                results.append([db.execute(sql, params).fetchall() for sql, params in queries])
            except Exception as exc:
                results.append(exc)
        return results

    # -- requests ----------------------------------------------------------

    async def read(self, queries: Sequence[Query], mail_of: str | None = None) -> list[list[tuple[Any, ...]]]:
        """The rows of each query, run in mailbox order (after every write sent before).
        ``mail_of``: the first query is that user's undelivered messages
        (``chat_store.undelivered``). Raises StoreError."""
        reply: Reply[list[list[tuple[Any, ...]]]] = Reply()
        await self._submit(_Read(queries, reply, mail_of))
        return await reply.wait()

    def no_mail_waiting(self, user_id: str) -> bool:
        """True only if ``user_id`` has no undelivered chat message now (no query:
        what ``chat_store.undelivered`` would answer after every commit so far)."""
        return self.mail is not None and not self.mail.may_have(user_id)

    # -- job events --------------------------------------------------------

