"""How many distinct jobs each identity watches, so no identity can take the room cap.

``[jobs] max_rooms`` bounds the job rooms a node runs. Before this bound, 101
connections on one shared static token, each joining 100 jobs, started 10 000 rooms in
8 s, and every backend publish to a new job got 503 for as long as they were held. Two
rules keep the cap for everyone:

* an identity may watch at most ``max_jobs_per_identity`` distinct jobs at once, over
  all its connections. A JWT user is one identity; a static token is a *shared*
  identity (every browser of a site may use it), so it is counted per client address:
  one address cannot exhaust it for the others;
* joins may start a room only while fewer than ``max_rooms - rooms_reserved_for_publishes``
  run (:meth:`JobRooms.join`): publishes, the backend's way in, always find a room.

Sync and atomic (no ``await``): a join reserves its place before it waits for the room,
and gives it back if the join fails; a connection's leave and its end give theirs back.
"""

from __future__ import annotations

from collections import Counter

from ..auth.tokens import Principal

Identity = tuple[str, ...]


def identity_of(principal: Principal, remote_host: str) -> Identity:
    """The identity a join counts against: the user, or the static token and the address."""
    if principal.is_user:
        return ("user", principal.user_id)
    return ("token", principal.token_name or principal.user_id, remote_host)


class JobWatchers:
    """Per identity, how many of its connections watch each job."""

    __slots__ = ("max_jobs", "_watching")

    def __init__(self, max_jobs_per_identity: int) -> None:
        self.max_jobs = max_jobs_per_identity
        self._watching: dict[Identity, Counter[str]] = {}

    def reserve(self, identity: Identity, job_id: str) -> bool:
        """Count one more connection of ``identity`` watching ``job_id``; False (nothing
        counted) when that would make the identity watch more than ``max_jobs`` jobs."""
        jobs = self._watching.get(identity)
        if jobs is None:
            jobs = self._watching[identity] = Counter()
        if job_id not in jobs and len(jobs) >= self.max_jobs:
            if not jobs:
                del self._watching[identity]
            return False
        jobs[job_id] += 1
        return True

    def release(self, identity: Identity, job_id: str) -> None:
        """One connection of ``identity`` no longer watches ``job_id``."""
        jobs = self._watching.get(identity)
        if jobs is None or job_id not in jobs:
            return
        jobs[job_id] -= 1
        if jobs[job_id] <= 0:
            del jobs[job_id]
            if not jobs:
                del self._watching[identity]

    def watching(self, identity: Identity) -> int:
        """How many distinct jobs ``identity`` watches now."""
        return len(self._watching.get(identity, ()))
