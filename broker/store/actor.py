"""What the two stores share: one actor task behind a bounded mailbox.

The SQLite store (:mod:`broker.store.sqlite`) and PostgreSQL's (:mod:`broker.store.postgres`) are
both a :class:`MailboxStore`: callers put requests into its bounded ``inbox`` and wait
for each request's :class:`~actors.Reply`; the subclass's ``run`` is the actor that
takes them out (group-committing writes) and fills the replies. This module has the
callers' side both stores answer the same way: :meth:`MailboxStore.write`,
submitting a request, and closing; the errors every caller of a store catches; and
the actor's group commit with its retry (:meth:`MailboxStore.commit_batch`), written
once: each store says how it runs a transaction and what its errors mean.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import Any, Generic, TypeVar

import attrs
import trio

from actors import Mailbox, MailboxClosed, Reply

from ..config.loader import StoreConfig
from .sql import Statement

log = logging.getLogger("broker.store")


class StoreError(Exception):
    """The store could not complete the request; nothing of it was committed."""


class SeqConflict(StoreError):
    """A job event's seq is already stored: two writers sequenced the same job."""


@attrs.frozen
class WriteRequest:
    """Statements to commit (with other callers' writes, in one transaction)."""

    statements: list[Statement]
    reply: Reply[None]
    mail_for: Collection[str] = ()  # users who may have undelivered chat messages once it commits


OtherRequest = TypeVar("OtherRequest")  # the requests a store takes besides WriteRequest
Write = TypeVar("Write")  # what a store commits in one transaction: WriteRequest, or that and its own writes


class MailboxStore(Generic[OtherRequest, Write]):
    """The callers' side of a store actor, and its group commit. When the mailbox is
    full, callers wait (backpressure on whoever writes); after :meth:`close`, requests
    fail with StoreError."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.inbox: Mailbox[WriteRequest | OtherRequest] = Mailbox(config.inbox_size)
        self.batches = 0  # transactions committed
        self.rows_written = 0

    async def write(self, statements: list[Statement], mail_for: Collection[str] = ()) -> None:
        """Commit ``statements`` (with others' writes, in one transaction); returns once
        committed. Raises StoreError (SeqConflict for a job seq already stored), or
        StoreError if the store is closed. Cancelled while waiting for the commit, the
        write may still be committed. ``mail_for``: the users it may leave with
        undelivered chat messages (kept by the SQLite store, see ``no_mail_waiting``)."""
        reply: Reply[None] = Reply()
        await self._submit(WriteRequest(statements, reply, mail_for))
        await reply.wait()

    async def _submit(self, request: WriteRequest | OtherRequest) -> None:
        """Put ``request`` in the mailbox, waiting while it is full (cancelled while
        waiting: nothing was submitted). Raises StoreError if the store is closed."""
        try:
            await self.inbox.send(request)
        except MailboxClosed:
            raise StoreError("store is closed") from None

    def close(self) -> None:
        """Accept no more requests; the actor commits what is queued, then ends."""
        self.inbox.close_sending()

    # -- the actor's side: group commit ------------------------------------

    async def commit_batch(self, writes: Sequence[Write]) -> None:
        """Commit ``writes`` in one transaction (one worker-thread call), then answer
        each. If it fails on a statement, each write is retried in a transaction of its
        own, so one bad write fails only its own caller; if it fails so that every write
        would (:meth:`_fails_every_write`: the connection), all fail at once. Shielded:
        a transaction in flight always finishes, and every caller is answered."""
        with trio.CancelScope(shield=True):
            error = await self._run_transaction(writes)
            if error is None:
                self.batches += 1
                for write in writes:
                    self._committed(write)
                return
            if len(writes) == 1 or self._fails_every_write(error):
                log.error("store: %s failed: %s", "write" if len(writes) == 1 else f"{len(writes)} writes",
                          self._describe(error))
                for write in writes:
                    self._reply_of(write).fail(self._store_error(error))
                return
            for write in writes:
                single = await self._run_transaction([write])
                if single is None:
                    self.batches += 1
                    self._committed(write)
                else:
                    log.error("store: write failed: %s", self._describe(single))
                    self._reply_of(write).fail(self._store_error(single))

    async def _run_transaction(self, writes: Sequence[Write]) -> Exception | None:
        """Run ``writes`` in one transaction and commit (counting ``rows_written``), or
        roll back and return the error."""
        raise NotImplementedError

    def _committed(self, write: Write) -> None:
        """Answer a committed write."""
        raise NotImplementedError

    def _reply_of(self, write: Write) -> Reply[Any]:
        return write.reply  # type: ignore[attr-defined]  # every write carries its reply

    def _store_error(self, error: Exception) -> StoreError:
        """What the callers of a failed write get."""
        return StoreError(f"write failed: {error}")

    def _fails_every_write(self, error: Exception) -> bool:
        """True if retrying write by write would fail the same way (the connection)."""
        return False

    def _describe(self, error: Exception) -> str:
        """The error for the log."""
        return str(error)
