"""Recognising a retried chat send (a protocol extension, docs/PROTOCOL.md section 4).

A client that lost its connection before the ``chat_ack`` arrived sends the message again
with the same ``clientMsgId``. The conversation remembers the msgId it stored for the
last ``RECENT_SENDS`` (sender, clientMsgId) pairs and answers such a retry with the
original ``chat_ack`` instead of storing the message twice.

Bound: ``RECENT_SENDS`` entries per conversation room while the room is running (a room
stops after ``[chat] room_idle_timeout`` without traffic). Each entry is a sender id
(<= 128 characters), a clientMsgId (<= 64) and an int: ~55 kB per conversation with
ASCII ids at their longest, ~130 kB if they are made of 4-byte characters.
A retry arriving after the room stopped or the broker restarted is stored again: clients
retry within seconds of reconnecting, well inside the idle timeout.
"""

from __future__ import annotations

from collections import OrderedDict

RECENT_SENDS = 128


class RecentSends:
    """(sender, clientMsgId) -> msgId for the newest ``limit`` stored sends."""

    __slots__ = ("_limit", "_stored")

    def __init__(self, limit: int = RECENT_SENDS) -> None:
        self._limit = limit
        self._stored: OrderedDict[tuple[str, str], int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._stored)

    def get(self, sender: str, client_msg_id: str | None) -> int | None:
        if client_msg_id is None:
            return None
        return self._stored.get((sender, client_msg_id))

    def remember(self, sender: str, client_msg_id: str | None, msg_id: int) -> None:
        if client_msg_id is None:
            return
        self._stored[(sender, client_msg_id)] = msg_id
        while len(self._stored) > self._limit:
            self._stored.popitem(last=False)
