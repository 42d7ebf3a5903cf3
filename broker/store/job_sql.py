"""The job SQL both stores run: events with their seq, the history kept per job, and
idempotency keys (written in the same transaction as the event they name).

Statement builders only: the SQLite store (:mod:`.sqlite`) and PostgreSQL's
(:mod:`.postgres`) each run them their own way, so neither imports the other.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from typing import Any, Protocol

import attrs

from .sql import Query, Statement

PRUNE_EVERY = 64  # a job's history beyond `keep` is dropped once per this many events
PRUNE_KEYS_BATCH = 1000  # expired idempotency keys forgotten by one publish transaction at most
KEY_PRUNE_INTERVAL = 0.1  # seconds between two such batches: up to 10 000 expired keys a second


@attrs.frozen
class StoredEvent:
    seq: int
    type: str
    payload: bytes  # the exact JSON sent to clients


@attrs.frozen
class JobSnapshot:
    last_seq: int
    events: list[StoredEvent]  # the newest ones, oldest first
    latest_status: StoredEvent | None


def job_event_statements(job_id: str, events: list[StoredEvent], keep: int) -> list[Statement]:
    """Insert ``events`` (a stored seq is an error, never overwritten), move the latest
    status forward, and every PRUNE_EVERY events drop history beyond ``keep``."""
    now = time.time()
    statements: list[Statement] = [
        (
            "INSERT INTO job_events (job_id, seq, type, payload, created_at) VALUES (?, ?, ?, ?, ?)",
            [(job_id, e.seq, e.type, e.payload.decode("utf-8"), now) for e in events],
        )
    ]
    statuses = [e for e in events if e.type == "job_status"]
    if statuses:
        newest = statuses[-1]
        statements.append(
            (
                "INSERT INTO job_latest_status (job_id, seq, payload) VALUES (?, ?, ?) "
                "ON CONFLICT (job_id) DO UPDATE SET seq = excluded.seq, payload = excluded.payload "
                "WHERE excluded.seq > job_latest_status.seq",
                [(job_id, newest.seq, newest.payload.decode("utf-8"))],
            )
        )
    if events[0].seq // PRUNE_EVERY != events[-1].seq // PRUNE_EVERY or len(events) >= PRUNE_EVERY:
        # history beyond `keep` is dropped every PRUNE_EVERY events, not on every write
        statements.append(
            ("DELETE FROM job_events WHERE job_id = ? AND seq <= ?", [(job_id, events[-1].seq - keep)])
        )
    return statements


@attrs.frozen
class IdempotencyKeys:
    """Publishes' idempotency keys to remember with the events they came with."""

    seqs: list[tuple[str, int]]  # (key, seq of its event)
    now: float
    expires_at: float
    prune: bool = False  # also forget up to PRUNE_KEYS_BATCH expired keys (of any job), oldest first


def idempotency_key_statements(job_id: str, keys: IdempotencyKeys | None) -> list[Statement]:
    """Remember ``keys``: an expired row of the same key is replaced; one still
    remembered makes the transaction fail (a duplicate key, never a silent overwrite)."""
    if keys is None:
        return []
    statements: list[Statement] = []
    if keys.seqs:
        statements += [
            ("DELETE FROM job_idempotency_keys WHERE job_id = ? AND idempotency_key = ? AND expires_at <= ?",
             [(job_id, key, keys.now) for key, _ in keys.seqs]),
            ("INSERT INTO job_idempotency_keys (job_id, idempotency_key, seq, expires_at) VALUES (?, ?, ?, ?)",
             [(job_id, key, seq, keys.expires_at) for key, seq in keys.seqs]),
        ]
    if keys.prune:  # a batch at a time: a backlog of expired keys never stalls the publish that prunes
        statements.append((
            "DELETE FROM job_idempotency_keys WHERE (job_id, idempotency_key) IN (SELECT job_id, idempotency_key "
            "FROM job_idempotency_keys WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
            [(keys.now, PRUNE_KEYS_BATCH)],
        ))
    return statements


def idempotency_key_query(job_id: str, keys: list[str], now: float) -> Query:
    """The rows (key, seq) of those of ``keys`` remembered for ``job_id`` at ``now``."""
    marks = ", ".join("?" * len(keys))
    return (f"SELECT idempotency_key, seq FROM job_idempotency_keys WHERE job_id = ? "
            f"AND idempotency_key IN ({marks}) AND expires_at > ?", (job_id, *keys, now))


def job_queries(job_id: str, limit: int) -> list[Query]:
    return [
        ("SELECT seq, type, payload FROM job_events WHERE job_id = ? ORDER BY seq DESC LIMIT ?", (job_id, limit)),
        ("SELECT seq, payload FROM job_latest_status WHERE job_id = ?", (job_id,)),
    ]


def job_snapshot(results: list[list[tuple[Any, ...]]]) -> JobSnapshot:
    """The answer to :func:`job_queries`."""
    rows, status_rows = results
    events = [StoredEvent(seq, kind, payload.encode("utf-8")) for seq, kind, payload in reversed(rows)]
    latest = (StoredEvent(status_rows[0][0], "job_status", status_rows[0][1].encode("utf-8"))
              if status_rows else None)
    last_seq = max(events[-1].seq if events else 0, latest.seq if latest else 0)
    return JobSnapshot(last_seq, events, latest)



def job_page_queries(job_id: str, after: int, limit: int) -> list[Query]:
    """A page of a job's events after ``after`` (oldest first, at most ``limit``), its
    latest status and its last seq (the server API's history pages)."""
    return [
        ("SELECT seq, type, payload FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
         (job_id, after, limit)),
        ("SELECT seq, payload FROM job_latest_status WHERE job_id = ?", (job_id,)),
        ("SELECT COALESCE(MAX(seq), 0) FROM job_events WHERE job_id = ?", (job_id,)),
    ]


def job_page(results: list[list[tuple[Any, ...]]], keep: int) -> JobSnapshot:
    """The answer to :func:`job_page_queries`: events older than the newest ``keep``
    (stored, but no longer history: pruning is periodic) are left out."""
    rows, status_rows, last_rows = results
    latest = (StoredEvent(status_rows[0][0], "job_status", status_rows[0][1].encode("utf-8"))
              if status_rows else None)
    last_seq = max(int(last_rows[0][0]), latest.seq if latest else 0)
    events = [StoredEvent(seq, kind, payload.encode("utf-8")) for seq, kind, payload in rows
              if seq > last_seq - keep]
    return JobSnapshot(last_seq, events, latest)


class _ReadsAndWrites(Protocol):
    async def write(self, statements: list[Statement], mail_for: Collection[str] = ()) -> None: ...

    async def read(self, queries: Sequence[Query], mail_of: str | None = None) -> list[list[tuple[Any, ...]]]: ...


class JobEventRequests:
    """The job requests both stores answer the same way, over their own ``write`` and
    ``read`` (a mixin: SQLite's and PostgreSQL's store classes inherit it)."""

    async def append_job_events(self: _ReadsAndWrites, job_id: str, events: list[StoredEvent], keep: int,
                                keys: IdempotencyKeys | None = None) -> None:
        """Store ``events`` (ascending seq) and prune the job's history to ``keep`` events;
        with ``keys``, remember them in the same transaction. Raises SeqConflict if a seq
        is already stored, whichever node stored it; StoreError if a key is still
        remembered (nothing of the call is stored either way)."""
        await self.write(job_event_statements(job_id, events, keep) + idempotency_key_statements(job_id, keys))

    async def load_job(self: _ReadsAndWrites, job_id: str, limit: int) -> JobSnapshot:
        return job_snapshot(await self.read(job_queries(job_id, limit)))

    async def find_idempotency_keys(self: _ReadsAndWrites, job_id: str, keys: list[str], now: float) -> dict[str, int]:
        """Those of ``keys`` remembered for ``job_id`` at ``now``, with their seqs."""
        return dict((await self.read([idempotency_key_query(job_id, keys, now)]))[0])
