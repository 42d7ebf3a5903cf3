"""Chat across nodes: a message committed on one node reaches its recipients'
connections on every other node, and a group change made through any node's API
reaches the conversation actors of every node.

After a conversation has committed a batch (the store is the truth: in a cluster the
shared PostgreSQL store), it hands the batch to :meth:`ChatRelay.relay`, which
publishes it on the backplane's chat bus; every other node delivers it to the local sessions
of its recipients exactly as a local delivery (tracked, confirmed, so what a
connection never confirmed comes again from the store on its next connection). A
relay that fails (Redis unreachable) loses no message: it is stored, and its
recipients get it from the store when they reconnect.

Every node delivers a conversation's messages, its own and relayed ones, in commit
order through one :class:`~broker.chat.order.DeliveryOrder` (see there).

Wire format (one backplane message per batch): a JSON header line
``{"n": instance, "c": conversation, "k": kind, "s": sender, "m": members|null,
"i": [msgId...], "p": [previous msgId in the conversation...]}`` then one line per
message payload, the bytes the store holds (compact JSON never holds a raw newline).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..cluster import BackplaneUnavailable
from ..protocols import text_frame
from ..store import chat_sql as chat_store
from .local_delivery import deliver_here
from .order import DeliveryOrder, Linked

if TYPE_CHECKING:
    from ..cluster import ChatBus
    from ..hub.connections import Hub

log = logging.getLogger("broker.chat_relay")


class ChatRelay:
    def __init__(self, bus: ChatBus, hub: Hub, store: Any) -> None:
        self._bus = bus
        self._hub = hub
        self.on_group_changed: Callable[[str], None] | None = None  # Chat: mark that group's actor stale

        async def fetch(conversation: str, after: int, upto: int, limit: int) -> list[chat_store.StoredMessage]:
            return await chat_store.messages_between(store, conversation, after, upto, limit)

        self.order = DeliveryOrder(self._deliver, fetch)

    async def run(self) -> None:
        """Fill the holes of the delivery order from the store, until cancelled."""
        await self.order.run()

    @property
    def active(self) -> bool:
        return self._bus.clustered

    def deliver_local(self, conversation: str, kind: str, members: list[str] | None, messages: list[Linked]) -> int:
        """Messages this node committed, to this node's recipients in their turn (sync);
        returns the number of deliveries made now."""
        return self.order.offer(conversation, kind, members, messages)

    async def relay(self, conversation: str, kind: str, sender: str, members: list[str] | None,
                    messages: list[Linked]) -> None:
        """Publish a committed batch of one sender for the other nodes (best effort, see
        the module doc)."""
        header = json.dumps({"n": self._bus.instance, "c": conversation, "k": kind, "s": sender,
                             "m": members, "i": [m.msg_id for m in messages], "p": [m.prev for m in messages]},
                            separators=(",", ":"))
        try:
            await self._bus.publish_chat(b"\n".join([header.encode(), *(m.payload for m in messages)]))
        except BackplaneUnavailable as exc:
            log.warning("conversation %s: %d messages not relayed to other nodes (stored; delivered on "
                        "reconnect): %s", conversation, len(messages), exc)

    async def group_changed(self, group_id: str) -> None:
        try:
            await self._bus.publish_group_change(group_id)
        except BackplaneUnavailable as exc:
            log.warning("group %s: change not announced to other nodes: %s", group_id, exc)

    # -- the backplane's side (sync, never blocks) --------------------------

    def deliver_remote_chat(self, data: bytes) -> None:
        header_line, *payloads = data.split(b"\n")
        header = json.loads(header_line)
        if header["n"] == self._bus.instance:
            return  # offered here when it was committed
        sender, ids = header["s"], header["i"]
        links = header.get("p") or [0] * len(ids)  # a node of an older version: delivered as it arrives
        messages = [Linked(msg_id, prev, sender, payload)
                    for msg_id, prev, payload in zip(ids, links, payloads, strict=True)]
        self.order.offer(header["c"], header["k"], header["m"], messages)

    def _deliver(self, conversation: str, kind: str, sender: str, members: list[str] | None,
                 msg_id: int, payload: bytes) -> int:
        """One message to this node's recipients (sync); the number of deliveries made."""
        return deliver_here(self._hub, conversation, kind, sender, members, msg_id, text_frame(payload))

    def remote_group_changed(self, group_id: str) -> None:
        if self.on_group_changed is not None:
            self.on_group_changed(group_id)
