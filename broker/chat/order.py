"""One delivery order per conversation on every node of a cluster: the commit order.

In a cluster, the messages of one conversation are committed by several nodes, and
each node hears of the others' through Redis after their commit: two senders on two
nodes would reach members in different orders if each node delivered its own at once
and the others' when they arrive. So every message of a clustered conversation, the
node's own and relayed ones alike, goes through :class:`DeliveryOrder` before it
reaches a connection.

The store numbers a conversation's messages while the conversation is locked, so its
msgIds ascend in commit order, and each committed message carries the msgId of the
one committed before it in the conversation (``prev``, read under the same lock). Per
conversation, this node remembers the last msgId it delivered; a message whose
``prev`` is that one is delivered at once (then any buffered ones that follow it),
any other newer one waits in a buffer. A hole that is still there ``hold`` seconds
later (a relay that was lost, or is slow) is read from the store, where everything
before a committed message already is: the node delivers the missing range from it,
in order, then what was buffered. Nothing is delivered twice: a message at or below
the last delivered msgId is dropped.

Bounds: at most ``max_pending`` buffered messages per conversation; beyond that a
message is not buffered and the conversation resynchronises from the store at once
(it is committed, so the store has it). At most ``max_conversations`` conversations
are remembered; the least recently used one without buffered messages is forgotten.
A conversation this node does not remember starts from ``floor``: the store's newest
msgId when the node started (read before it subscribed to the other nodes' messages,
so none committed since is missed: a message above it comes live or from the store).
Forgetting a conversation raises ``floor`` to the newest msgId seen here; a message of
a forgotten (or never seen) conversation at or below it that is still on its way then
is not delivered live: its recipients get it from the store on their next connection,
as with a relay lost to a Redis failure. Likewise a message whose transaction was
still open when the node read its start ``floor``.

The state changes synchronously (``offer``, from the conversation actor or the
backplane's feed); :meth:`DeliveryOrder.run` is the task that fills holes from the
store. Cancelling it stops the filling; a store error is logged and retried after
``hold``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import attrs
import trio

from ..store import StoreError
from ..store.chat_sql import StoredMessage

log = logging.getLogger("broker.chat_order")

# (conversation, kind, sender, members or None, msgId, payload) -> deliveries made
Deliver = Callable[[str, str, str, "list[str] | None", int, bytes], int]
# (conversation, after, upto, limit) -> the stored messages after < msgId <= upto, ascending
Fetch = Callable[[str, int, int, int], Awaitable[list[StoredMessage]]]


@attrs.frozen
class Linked:
    """A committed message and its predecessor in the conversation (0: none)."""

    msg_id: int
    prev: int
    sender: str
    payload: bytes


@attrs.define
class _Conversation:
    kind: str
    members: list[str] | None
    last: int  # the newest msgId delivered here
    newest: int  # the newest msgId known committed (delivered, buffered or refused by the bound)
    pending: dict[int, Linked] = attrs.Factory(dict)  # prev -> the message that follows it
    due: float | None = None  # when the hole is read from the store (None: no hole)


class DeliveryOrder:
    def __init__(self, deliver: Deliver, fetch: Fetch, hold: float = 0.2, max_pending: int = 1000,
                 max_conversations: int = 100_000) -> None:
        self._deliver = deliver
        self._fetch = fetch
        self.hold = hold
        self.max_pending = max_pending
        self.max_conversations = max_conversations
        self._states: OrderedDict[str, _Conversation] = OrderedDict()
        # every message at or below it of a conversation not remembered here was delivered here
        # or is in the store for every recipient here: the store's newest msgId when the node
        # started (before it subscribed), raised when a conversation is forgotten
        self.floor = 0
        self._newest_seen = 0
        self._wake = trio.Event()
        self.filled = 0  # messages delivered from the store to fill a hole (metrics, tests)

    def offer(self, conversation: str, kind: str, members: list[str] | None, messages: list[Linked]) -> int:
        """Committed ``messages`` of ``conversation`` (ascending): deliver those whose turn
        it is, buffer the others. Returns the number of deliveries made. Sync."""
        state = self._states.get(conversation)
        if state is None:
            state = _Conversation(kind, members, last=self.floor, newest=self.floor)
            self._states[conversation] = state
            self._forget_some()
        else:
            self._states.move_to_end(conversation)
            state.kind, state.members = kind, members
        for message in messages:
            state.newest = max(state.newest, message.msg_id)
            self._newest_seen = max(self._newest_seen, message.msg_id)
            if message.msg_id > state.last and len(state.pending) < self.max_pending:
                state.pending[max(message.prev, state.last)] = message
        delivered = self._drain(conversation, state)
        if state.last < state.newest:
            now = trio.current_time()
            if len(state.pending) >= self.max_pending:  # full: resynchronise from the store at once
                state.due = now
                self._wake.set()
            elif state.due is None:
                state.due = now + self.hold
                self._wake.set()
        return delivered

    def _drain(self, conversation: str, state: _Conversation) -> int:
        delivered = 0
        while (message := state.pending.pop(state.last, None)) is not None:
            delivered += self._deliver(conversation, state.kind, message.sender, state.members,
                                       message.msg_id, message.payload)
            state.last = message.msg_id
        if state.last >= state.newest:
            state.pending.clear()
            state.due = None
        return delivered

    def _forget_some(self) -> None:
        if len(self._states) <= self.max_conversations:
            return
        for conversation, state in self._states.items():
            if state.due is None:
                del self._states[conversation]
                self.floor = max(self.floor, self._newest_seen)
                return

    def last_delivered(self, conversation: str) -> int | None:
        state = self._states.get(conversation)
        return None if state is None else state.last

    # -- filling holes -------------------------------------------------------

    async def run(self) -> None:
        """Fill every hole once it is due, until cancelled."""
        while True:
            now = trio.current_time()
            due = [(c, s) for c, s in self._states.items() if s.due is not None]
            for conversation, state in due:
                if state.due is not None and state.due <= now:
                    await self._fill(conversation, state)
            waits = [s.due for s in self._states.values() if s.due is not None]
            self._wake = trio.Event()
            with trio.move_on_at(min(waits) if waits else float("inf")):
                await self._wake.wait()

    async def _fill(self, conversation: str, state: _Conversation) -> None:
        """Deliver (last, newest] of ``conversation`` from the store, then what follows it."""
        target = state.newest
        try:
            while state.last < target:
                rows = await self._fetch(conversation, state.last, target, self.max_pending)
                for row in rows:
                    if row.msg_id > state.last:  # an offer may have moved on meanwhile
                        self._deliver(conversation, state.kind, row.send_id, state.members, row.msg_id, row.payload)
                        state.last = row.msg_id
                        self.filled += 1
                if len(rows) < self.max_pending:
                    break
        except StoreError as exc:
            log.warning("conversation %s: missing messages not read from the store (retried): %s", conversation, exc)
            state.due = trio.current_time() + self.hold
            return
        state.last = max(state.last, target)  # what the store no longer has (a deleted group) is skipped
        state.pending = {max(prev, state.last): m for prev, m in state.pending.items() if m.msg_id > state.last}
        state.due = None
        self._drain(conversation, state)
        if state.last < state.newest and state.due is None:
            state.due = trio.current_time() + self.hold
