"""The webhook outbox's SQL, shared by SQLite and PostgreSQL (see :mod:`.sql`).

One row per (event, endpoint): recorded in the transaction that makes the event
happen (a chat message's row commits with the message), deleted once the endpoint
answered 2xx, or kept as a dead letter (``state`` 1) after ``[webhooks] max_age``.
Rows of one (endpoint, key) are sent one at a time in id order: only the oldest
pending row of a key (its *head*) may be taken.

PostgreSQL's node takes heads with a lease (``claimed_by``, ``lease_until``) in one
``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING``: two nodes never
take the same row, and a row whose node died is taken again once its lease has run
out. SQLite's single process keeps what it has taken in memory instead, and finds
the heads in ``webhook_heads`` (one row per key with pending rows, kept by triggers in
the transaction that records, delivers, dead-letters or re-sends), read in id order
from an index: a look reads the heads it takes (and the ones not due before them),
not every pending row on the store's only thread (32 heads of 10 000 keys over
100 000 rows: 0.07 ms, the scan took 280 ms). PostgreSQL still finds heads with the
``NOT EXISTS`` scan: it runs on the database server, and a heads table kept there
would need row locks per key against concurrent inserts of other nodes.

A cluster's ``user.online`` / ``user.offline`` are numbered per user by Redis;
``webhook_user_seq`` keeps the newest number written per user, so a transition is
inserted at most once and never after a higher one (:func:`user_transition_statements`).
One node keeps ``webhook_online`` instead (who was announced online, for a restart).
"""

from __future__ import annotations

from .sql import Query, Statement

SQLITE_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS webhook_outbox (
        id INTEGER PRIMARY KEY,
        endpoint TEXT NOT NULL,
        event_key TEXT NOT NULL,
        webhook_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at REAL NOT NULL,
        state INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        lease_until REAL NOT NULL DEFAULT 0,
        claimed_by TEXT NOT NULL DEFAULT '',
        last_error TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX IF NOT EXISTS webhook_outbox_by_key ON webhook_outbox (endpoint, event_key, id)",
    "CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (state, next_attempt_at)",
    "CREATE TABLE IF NOT EXISTS webhook_online (user_id TEXT PRIMARY KEY) WITHOUT ROWID",
    # the head (oldest pending row) of each (endpoint, key) with pending rows, kept by
    # triggers in the transaction that changes the outbox: taking heads reads one row
    # per key instead of every pending row
    """CREATE TABLE IF NOT EXISTS webhook_heads (
        endpoint TEXT NOT NULL,
        event_key TEXT NOT NULL,
        head_id INTEGER NOT NULL,
        PRIMARY KEY (endpoint, event_key)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS webhook_outbox_pending ON webhook_outbox (endpoint, event_key, id) WHERE state = 0",
    "CREATE INDEX IF NOT EXISTS webhook_heads_by_id ON webhook_heads (head_id)",  # heads in id order, due or not
    *(f"""CREATE TRIGGER IF NOT EXISTS webhook_heads_{name} AFTER {event} ON webhook_outbox WHEN {when}
    BEGIN
        INSERT INTO webhook_heads (endpoint, event_key, head_id) VALUES (NEW.endpoint, NEW.event_key, NEW.id)
        ON CONFLICT (endpoint, event_key) DO UPDATE SET head_id = MIN(head_id, excluded.head_id);
    END""" for name, event, when in (("insert", "INSERT", "NEW.state = 0"),
                                     ("resend", "UPDATE OF state", "OLD.state <> 0 AND NEW.state = 0"))),
    *(f"""CREATE TRIGGER IF NOT EXISTS webhook_heads_{name} AFTER {event} ON webhook_outbox WHEN {when}
    BEGIN
        DELETE FROM webhook_heads WHERE endpoint = OLD.endpoint AND event_key = OLD.event_key AND head_id = OLD.id;
        INSERT INTO webhook_heads (endpoint, event_key, head_id)
            SELECT endpoint, event_key, id FROM webhook_outbox
            WHERE endpoint = OLD.endpoint AND event_key = OLD.event_key AND state = 0 ORDER BY id LIMIT 1
        ON CONFLICT (endpoint, event_key) DO UPDATE SET head_id = MIN(head_id, excluded.head_id);
    END""" for name, event, when in (("delete", "DELETE", "OLD.state = 0"),
                                     ("dead", "UPDATE OF state", "OLD.state = 0 AND NEW.state <> 0"))),
    # an outbox written before the heads table existed: its heads, once
    """INSERT INTO webhook_heads (endpoint, event_key, head_id)
        SELECT endpoint, event_key, MIN(id) FROM webhook_outbox WHERE state = 0 GROUP BY endpoint, event_key
        ON CONFLICT (endpoint, event_key) DO NOTHING""",
    "CREATE TABLE IF NOT EXISTS webhook_user_seq (user_id TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID",
]

PG_MIGRATION = [
    """CREATE TABLE webhook_outbox (
        id BIGSERIAL PRIMARY KEY,
        endpoint TEXT COLLATE "C" NOT NULL,
        event_key TEXT COLLATE "C" NOT NULL,
        webhook_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        state SMALLINT NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        claimed_by TEXT NOT NULL DEFAULT '',
        last_error TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX webhook_outbox_by_key ON webhook_outbox (endpoint, event_key, id)",
    "CREATE INDEX webhook_outbox_due ON webhook_outbox (state, next_attempt_at)",
    'CREATE TABLE webhook_online (user_id TEXT COLLATE "C" PRIMARY KEY)',
]

# cluster: the newest user transition (its number) recorded per user (user_transition_statements)
PG_USER_SEQ_MIGRATION = [
    'CREATE TABLE webhook_user_seq (user_id TEXT COLLATE "C" PRIMARY KEY, seq BIGINT NOT NULL)',
]

PENDING, DEAD = 0, 1
ROW_COLUMNS = "id, endpoint, event_key, webhook_id, event_type, body, created_at, attempts"

_INSERT = ("INSERT INTO webhook_outbox (endpoint, event_key, webhook_id, event_type, body, created_at, next_attempt_at) "
           "VALUES (?, ?, ?, ?, ?, ?, ?)")

_HEADS = (
    f"SELECT {ROW_COLUMNS} FROM webhook_outbox o "
    "WHERE o.state = 0 AND o.next_attempt_at <= ? AND o.lease_until <= ? AND NOT EXISTS ("
    "  SELECT 1 FROM webhook_outbox p WHERE p.endpoint = o.endpoint AND p.event_key = o.event_key "
    "  AND p.state = 0 AND p.id < o.id) "
    "ORDER BY o.id LIMIT ?"
)


def insert_statement(rows: list[tuple[str, str, str, str, bytes, float]]) -> Statement:
    """Record events: (endpoint, key, webhook id, type, body, now) each, due at once."""
    return (_INSERT, [(e, k, w, t, b.decode("utf-8"), now, now) for e, k, w, t, b, now in rows])


_KEPT_HEADS = (
    f"SELECT {', '.join('o.' + c for c in ROW_COLUMNS.split(', '))} FROM webhook_heads h "
    "JOIN webhook_outbox o ON o.id = h.head_id "
    "WHERE o.next_attempt_at <= ? AND o.lease_until <= ? ORDER BY h.head_id LIMIT ?"
)


def heads_query(now: float, limit: int) -> Query:
    """Up to ``limit`` heads due at ``now`` and not leased (SQLite: a read of the heads
    table, one row per key with pending rows)."""
    return (_KEPT_HEADS, (now, now, limit))


def claim_query(node: str, now: float, lease_until: float, limit: int) -> Query:
    """Take up to ``limit`` heads for ``node`` until ``lease_until`` (PostgreSQL: one
    statement in autocommit, answered with the rows taken)."""
    inner = _HEADS.replace(f"SELECT {ROW_COLUMNS}", "SELECT o.id") + " FOR UPDATE SKIP LOCKED"
    sql = (f"UPDATE webhook_outbox SET claimed_by = ?, lease_until = ? WHERE id IN ({inner}) "
           f"RETURNING {ROW_COLUMNS}")
    return (sql, (node, lease_until, now, now, limit))


def delivered_statement(row_id: int) -> Statement:
    return ("DELETE FROM webhook_outbox WHERE id = ?", [(row_id,)])


def retry_later_statement(row_id: int, next_attempt_at: float, error: str) -> Statement:
    """Another attempt after ``next_attempt_at``, by whichever node takes it then."""
    return ("UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = ?, lease_until = 0, "
            "claimed_by = '', last_error = ? WHERE id = ?", [(next_attempt_at, error[:500], row_id)])


def dead_letter_statement(row_id: int, error: str) -> Statement:
    return ("UPDATE webhook_outbox SET state = 1, attempts = attempts + 1, lease_until = 0, claimed_by = '', "
            "last_error = ? WHERE id = ?", [(error[:500], row_id)])


def resend_statement(row_id: int, now: float) -> Statement:
    """A dead letter is pending again, its ``max_age`` counted from ``now``."""
    return ("UPDATE webhook_outbox SET state = 0, attempts = 0, created_at = ?, next_attempt_at = ?, "
            "lease_until = 0, claimed_by = '' WHERE id = ? AND state = 1", [(now, now, row_id)])


def forget_endpoints_statement(endpoint: str) -> Statement:
    return ("DELETE FROM webhook_outbox WHERE endpoint = ?", [(endpoint,)])


def depth_query() -> Query:
    """(endpoint, state, rows) for every endpoint with rows."""
    return ("SELECT endpoint, state, COUNT(*) FROM webhook_outbox GROUP BY endpoint, state", ())


def next_due_query(now: float) -> Query:
    """The earliest time after ``now`` a pending row falls due (None: none)."""
    return ("SELECT MIN(next_attempt_at) FROM webhook_outbox WHERE state = 0 AND next_attempt_at > ?", (now,))


def dead_letters_query(after_id: int, limit: int) -> Query:
    return ("SELECT id, endpoint, event_key, webhook_id, event_type, created_at, attempts, last_error "
            "FROM webhook_outbox WHERE state = 1 AND id > ? ORDER BY id LIMIT ?", (after_id, limit))


def dead_letter_query(row_id: int) -> Query:
    return ("SELECT id FROM webhook_outbox WHERE state = 1 AND id = ?", (row_id,))


# -- single node: who was online, so a restart after kill -9 can say user.offline ------


def online_statement(user_id: str, online: bool) -> Statement:
    """Remember (or forget) that ``user_id`` was announced online, with its event."""
    if online:
        return ("INSERT INTO webhook_online (user_id) VALUES (?) ON CONFLICT (user_id) DO NOTHING", [(user_id,)])
    return ("DELETE FROM webhook_online WHERE user_id = ?", [(user_id,)])


def online_users_query() -> Query:
    return ("SELECT user_id FROM webhook_online ORDER BY user_id", ())


# -- cluster: user transitions, each recorded once and in their order -------------------


def user_transition_statements(user_id: str, rows: list[tuple[int, str, str, str, str, bytes, float]],
                               newest: int) -> list[Statement]:
    """Record the user's transitions numbered up to ``newest``: ``rows`` (transition
    number, endpoint, key, webhook id, type, body, now), in ascending number. A row is
    inserted only if its number is above the newest recorded for the user, which then
    becomes ``newest``. The first statement locks the user's row (an upsert), so two
    nodes recording the same user's transitions run one after the other, and each later
    statement (READ COMMITTED: a snapshot per statement) sees what the other committed:
    a transition is inserted at most once, and never after a higher one of its user."""
    lock = ("INSERT INTO webhook_user_seq (user_id, seq) VALUES (?, 0) "
            "ON CONFLICT (user_id) DO UPDATE SET seq = webhook_user_seq.seq", [(user_id,)])
    insert = ("INSERT INTO webhook_outbox (endpoint, event_key, webhook_id, event_type, body, created_at, "
              "next_attempt_at) SELECT ?, ?, ?, ?, ?, ?, ? WHERE (SELECT seq FROM webhook_user_seq WHERE user_id = ?) < ?",
              [(e, k, w, t, b.decode("utf-8"), now, now, user_id, seq) for seq, e, k, w, t, b, now in rows])
    advance = ("UPDATE webhook_user_seq SET seq = ? WHERE user_id = ? AND seq < ?", [(newest, user_id, newest)])
    return [lock, insert, advance] if rows else [lock, advance]


def user_seq_query(user_id: str) -> Query:
    """The newest transition number recorded for ``user_id`` (no row: none)."""
    return ("SELECT seq FROM webhook_user_seq WHERE user_id = ?", (user_id,))
