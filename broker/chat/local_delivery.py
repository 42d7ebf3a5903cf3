"""A committed chat message to this node's connections: written once for the
conversation actor (a node alone) and the relay (in commit order, in a cluster).

Recipients are logged-in broker-protocol sessions only (proxy sessions never log
in): for ``all``, every chat endpoint but the sender's; otherwise the sessions of the
members but the sender. A broadcast is sent as it is; a message of a private or group
conversation is tracked until the connection confirms it (at least once). Sync, never
waits: a full outbox evicts its connection (4003).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..hub.connections import ChatEndpoint, Hub


def recipients_here(hub: Hub, kind: str, sender: str, members: Iterable[str] | None) -> list[ChatEndpoint]:
    """This node's connections a message of ``sender`` goes to."""
    if kind == "broadcast":
        return hub.chat_recipients(excluding_user=sender)
    return [session for user in members or () if user != sender for session in hub.sessions_of(user)]


def deliver_here(hub: Hub, conversation: str, kind: str, sender: str, members: Iterable[str] | None,
                 msg_id: int, frame: bytes) -> int:
    """Queue ``frame`` (message ``msg_id``) to this node's recipients; the deliveries made."""
    delivered = 0
    if kind == "broadcast":
        for session in hub.chat_recipients(excluding_user=sender):
            delivered += session.send_frame_nowait(frame)
        return delivered
    for user in members or ():
        if user != sender:
            for session in hub.sessions_of(user):
                delivered += session.deliver_chat(conversation, msg_id, frame)
    return delivered
