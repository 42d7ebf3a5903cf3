"""Chat across nodes: a message committed on one node reaches its recipients'
connections on every other node, and a group change made through any node's API
reaches the conversation actors of every node.

After a conversation has committed a batch (the store is the truth: in a cluster the
shared PostgreSQL store), it hands the batch to :meth:`ChatRelay.relay`, which
publishes it on the backplane; every other node delivers it to the local sessions
of its recipients exactly as a local delivery (tracked, confirmed, so what a
connection never confirmed comes again from the store on its next connection). A
relay that fails (Redis unreachable) loses no message: it is stored, and its
recipients get it from the store when they reconnect.

Wire format (one backplane message per batch): a JSON header line
``{"n": instance, "c": conversation, "k": kind, "s": sender, "m": members|null, "i": [msgId...]}``
then one line per message payload (compact JSON never holds a raw newline).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .protocols import text_frame
from .store import StoreError

if TYPE_CHECKING:
    from .backplane import Backplane
    from .hub import Hub

log = logging.getLogger("broker.chat_relay")


class ChatRelay:
    def __init__(self, backplane: Backplane, hub: Hub) -> None:
        self._backplane = backplane
        self._hub = hub
        self.on_group_changed: Callable[[str], None] | None = None  # Chat: mark that group's actor stale

    @property
    def active(self) -> bool:
        return self._backplane.clustered

    async def relay(self, conversation: str, kind: str, sender: str, members: list[str] | None,
                    messages: list[tuple[int, bytes]]) -> None:
        """Publish a committed batch for the other nodes (best effort, see the module doc)."""
        header = json.dumps({"n": self._backplane.instance, "c": conversation, "k": kind, "s": sender,
                             "m": members, "i": [msg_id for msg_id, _ in messages]}, separators=(",", ":"))
        try:
            await self._backplane.publish_chat(b"\n".join([header.encode(), *(p for _, p in messages)]))
        except StoreError as exc:
            log.warning("conversation %s: %d messages not relayed to other nodes (stored; delivered on "
                        "reconnect): %s", conversation, len(messages), exc)

    async def group_changed(self, group_id: str) -> None:
        try:
            await self._backplane.publish_group_change(group_id)
        except StoreError as exc:
            log.warning("group %s: change not announced to other nodes: %s", group_id, exc)

    # -- the backplane's side (sync, never blocks) --------------------------

    def deliver_remote_chat(self, data: bytes) -> None:
        header_line, *payloads = data.split(b"\n")
        header = json.loads(header_line)
        if header["n"] == self._backplane.instance:
            return  # delivered here already
        conversation, sender, members = header["c"], header["s"], header["m"]
        if header["k"] == "broadcast":
            sessions = self._hub.chat_recipients(excluding_user=sender)
        else:
            sessions = [s for user in members or () if user != sender for s in self._hub.sessions_of(user)]
        for msg_id, payload in zip(header["i"], payloads, strict=True):
            frame = text_frame(payload)
            for session in sessions:
                if header["k"] == "broadcast":
                    session.send_frame_nowait(frame)
                else:
                    session.deliver_chat(conversation, msg_id, frame)

    def remote_group_changed(self, group_id: str) -> None:
        if self.on_group_changed is not None:
            self.on_group_changed(group_id)
