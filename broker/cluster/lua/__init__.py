"""The Redis scripts of the cluster backplane.

Redis runs one script at a time, so each script is atomic: a job's seq, its history
stream, its latest status and the live PUBLISH change together, and publish order is
seq order on every subscriber. With ``appendfsync always`` a script's writes are on
disk before its reply is sent. With ``[cluster] min_replicas`` > 0 the append script
does not PUBLISH: the node WAITs for the replicas, then publishes the same message
itself (:mod:`broker.cluster.redis_jobs`), so nothing is delivered live before a replica has it.

Keys (prefix ``P``, job ``J``, user ``U``):

* ``P:epoch``: random id of this coordination state; made by whichever script finds it
  missing (Redis restarted empty), or by the append script that finds a new master:
  seqs of different epochs are unrelated.
* ``P:master``: the replication ID (``INFO replication`` ``master_replid``) of the
  master the last append was written to, read by the append script itself. A replica
  promoted to master (by Sentinel or by hand) takes a new replication ID and keeps the
  one it followed as ``master_replid2``; a master restarted on its AOF takes a new one
  too, with no ``master_replid2``. The append script starts a new epoch, before it gives
  any seq, when ``P:master`` is set, differs from its master's and that master was
  promoted: a failover (seqs continue from what the replica has). Events the old master
  stored but never replicated may have been seen through a stream read, the latest
  status or an idempotency repeat, and the new master gives their seqs to other events:
  ``(epoch, seq)`` still names one event, and a client resuming in the old epoch gets
  ``HISTORY_GAP``. A restart keeps the epoch. The ID, not the master's address: a
  failover back to the first master's address (its replica promoted, then the old
  master promoted again once it had become the new one's replica, with no append in
  between) is a change too, nodes that name one Redis by different addresses agree,
  and no node's view of where the master is can be stale. The load script only reads
  the epoch: a promoted master's stream holds only what was replicated.
* ``P:job:J:seq``: last seq; ``P:job:J:log``: stream of the newest events, entry id
  ``<seq>-0``, fields ``t`` (type) and ``p`` (the exact frame payload);
  ``P:job:J:status``: hash ``s`` (seq), ``p`` (payload) of the newest ``job_status``.
* ``P:idem:J|K``: seq of the event first published to job J with idempotency key K
  (expires after ``[jobs] idempotency_ttl``; ``|`` is in neither a job id nor a key).
* ``P:login:L``: hash session id -> node instance (``node_id/random``) of login L's live
  connections (L: ``user:<id>`` or ``token:<name>``).
* ``P:presence:J``: hash ``I|U`` -> connections of user U in job J on instance I.
* ``P:node:I``: exists while node instance I is alive (TTL, renewed by its heartbeat).
* ``P:instances``: every instance that has heartbeated and not been swept (webhooks);
  ``P:instance-logins:I``: the logins with an entry of instance I (added at claim,
  removed at the login's last release there), so a sweep finds a dead node's users.
* ``P:online:U`` (webhooks ``user.online``/``user.offline``): hash ``o`` ('1' while the
  last transition recorded for U was online), ``s`` (that transition's number: +1 per
  transition, so they alternate), ``b`` (the number the state began at, no transition
  itself: gap filling stops there). Begun at Redis ``TIME`` in microseconds, so a state
  begun after Redis lost its data (or after it expired, 24 h after going offline)
  numbers above every earlier one. ``P:user-transitions``: sorted set of transitions
  not yet acknowledged as written to the outbox, ``seq|on/off|b|U``, scored by the ms
  their lease ends (then a sweep hands them out again).

The occupancy keys (``P:watchers:J`` and the sets its sweep reads) are listed in
:mod:`broker.cluster.lua.occupancy`. A module per role holds its scripts: :mod:`.jobs`,
:mod:`.logins`, :mod:`.presence`, :mod:`.occupancy`.

Live messages on channel ``P:jobs``: ``J \\n epoch \\n first_seq (\\n type \\n payload)*``
(compact JSON never contains a raw newline, job ids cannot); on ``P:evict``:
``instance \\n session (\\n instance \\n session)*``; on ``P:presence``: job ids
whose presence changed, one per line.
"""

from .jobs import APPEND, LOAD
from .logins import CLAIM_LOGIN, RECONCILE_LOGINS, RELEASE_LOGIN, SWEEP_DEAD, USERS_ONLINE
from .occupancy import OCCUPANCY_CHANGE, OCCUPANCY_RESTORE, OCCUPANCY_SWEEP
from .presence import PRESENCE_READ, PRESENCE_SET

__all__ = ["APPEND", "CLAIM_LOGIN", "LOAD", "OCCUPANCY_CHANGE", "OCCUPANCY_RESTORE", "OCCUPANCY_SWEEP",
           "PRESENCE_READ", "PRESENCE_SET", "RECONCILE_LOGINS", "RELEASE_LOGIN", "SWEEP_DEAD", "USERS_ONLINE"]
