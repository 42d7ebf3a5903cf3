"""Presence in a job room: who is there, on this node and on every other.

A room tells :class:`RoomPresence` when a member arrives or leaves; the first
connection of a user in the room and its last one are passed on to the backplane's
presence role
(without waiting), which shares them with the other nodes. Members that joined with
``"presence": true`` are *watchers*: they get the list after ``joined`` and then a
``presence_join`` / ``presence_leave`` per change, computed by comparing the list as
last seen with a fresh read whenever the backplane says it may have changed. The list
is only kept while someone watches.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from ..cluster import BackplaneUnavailable
from ..hub.peer import Peer
from ..protocols import presence_change, presence_message, text_frame

if TYPE_CHECKING:
    from ..cluster import Presence

log = logging.getLogger("broker.presence")


Watcher = Peer  # presence frames go to a room's members like its events


class RoomPresence:
    def __init__(self, job_id: str, shared: Presence, list_max: int) -> None:
        self._job_id = job_id
        self._shared = shared
        self._list_max = list_max
        self._here: Counter[str] = Counter()  # user -> this node's members in the room
        self.watchers: dict[str, Watcher] = {}
        self._known: set[str] | None = None  # the list as the watchers last saw it
        self.refresh_queued = False  # a refresh command is in the room's mailbox (or due)

    def arrive(self, user_id: str) -> None:
        self._here[user_id] += 1
        self._shared.presence_update_nowait(self._job_id, user_id, 1)

    def depart(self, user_id: str, member_id: str) -> None:
        self.watchers.pop(member_id, None)
        if self._here[user_id] <= 1:
            del self._here[user_id]
        else:
            self._here[user_id] -= 1
        self._shared.presence_update_nowait(self._job_id, user_id, -1)

    def depart_all(self) -> None:
        """The room is failing: its members are no longer here."""
        for user_id, count in self._here.items():
            self._shared.presence_update_nowait(self._job_id, user_id, -count)
        self._here.clear()
        self.watchers.clear()

    async def watch(self, watcher: Watcher) -> None:
        """Add a watcher: the others get what changed, the new one the whole list."""
        await self.refresh()
        self.watchers[watcher.id] = watcher
        if self._known is None:
            self._known = set(self._here)  # the backplane is unreachable: what this node knows
        users = sorted(self._known)
        watcher.send_frame_nowait(text_frame(presence_message("jobId", self._job_id, len(users),
                                                              users[:self._list_max])))

    async def refresh(self) -> None:
        """Read the list again and send each watcher what changed. If the backplane is
        unreachable, nothing is sent: the next refresh (at the latest the next
        heartbeat) catches up."""
        self.refresh_queued = False
        if not self.watchers:
            self._known = None
            return
        try:
            now = await self._shared.job_presence(self._job_id)
        except BackplaneUnavailable as exc:
            log.debug("job %s: presence not read: %s", self._job_id, exc)
            return
        before, self._known = self._known, now
        if before is None or before == now:
            return
        frames = [text_frame(presence_change(False, self._job_id, u)) for u in sorted(before - now)]
        frames += [text_frame(presence_change(True, self._job_id, u)) for u in sorted(now - before)]
        batch = b"".join(frames)
        for watcher in list(self.watchers.values()):
            if not watcher.send_frame_nowait(batch):
                self.watchers.pop(watcher.id, None)
