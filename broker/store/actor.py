"""What the two stores share: one actor task behind a bounded mailbox.

The SQLite store (:mod:`broker.store.sqlite`) and PostgreSQL's (:mod:`broker.store.postgres`) are
both a :class:`MailboxStore`: callers put requests into its bounded ``inbox`` and wait
for each request's :class:`~actors.Reply`; the subclass's ``run`` is the actor that
takes them out (group-committing writes) and fills the replies. This module has the
callers' side both stores answer the same way: :meth:`MailboxStore.write`,
submitting a request, and closing; and the errors every caller of a store catches.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Generic, TypeVar

import attrs

from actors import Mailbox, MailboxClosed, Reply

from ..config.loader import StoreConfig
from .sql import Statement


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


class MailboxStore(Generic[OtherRequest]):
    """The callers' side of a store actor. When the mailbox is full, callers wait
    (backpressure on whoever writes); after :meth:`close`, requests fail with StoreError."""

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
