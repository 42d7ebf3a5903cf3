"""What the rooms and logins see of webhooks: a sink they record events in.

Chat, jobs and sessions never import the sender: an event either goes into the
outbox in the same transaction as what made it happen (:meth:`EventSink.statements`,
then :meth:`EventSink.committed` once that commits), or is written on its own
(:meth:`EventSink.record`, or :meth:`EventSink.record_transitions` for a user's
online/offline as the backplane decided it). A sink with no endpoint for an event type returns no
statements and writes nothing, so a broker without webhooks pays nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..cluster.interface import UserTransition
from ..store.sql import Statement


class EventSink(Protocol):
    def wants(self, event_type: str) -> bool:
        """Some endpoint takes ``event_type`` (sync: check before building data)."""
        ...

    def statements(self, event_type: str, key: str, data: bytes) -> list[Statement]:
        """The outbox rows for one event (``data``: compact JSON of an object), to be
        committed with the write that makes it happen. Pure apart from the outbox bound:
        beyond ``[webhooks] outbox_max`` rows of an endpoint, its rows are left out
        (counted in ``broker_webhook_events_dropped_total``)."""
        ...

    def committed(self) -> None:
        """Statements from :meth:`statements` were committed: the sender looks now."""
        ...

    async def record(self, event_type: str, key: str, data: bytes) -> None:
        """Write one event's rows and wake the sender. Raises StoreError (not recorded)."""
        ...

    async def record_transitions(self, transitions: Sequence[UserTransition]) -> None:
        """Write ``user.online`` / ``user.offline`` for the transitions (in one store
        write; a cluster's at most once each, in their order). Raises StoreError."""
        ...


class NoWebhooks:
    """The sink of a broker with no ``[[webhook]]``: nothing is ever recorded."""

    def wants(self, event_type: str) -> bool:
        return False

    def statements(self, event_type: str, key: str, data: bytes) -> list[Statement]:
        return []

    def committed(self) -> None:
        pass

    async def record(self, event_type: str, key: str, data: bytes) -> None:
        pass

    async def record_transitions(self, transitions: Sequence[UserTransition]) -> None:
        pass
