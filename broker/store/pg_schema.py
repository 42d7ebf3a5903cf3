"""PostgreSQL's schema and its migrations, applied once per version at start.

Each version's statements run in one transaction under an advisory lock, so nodes
starting together migrate once: the first one migrates, the others wait for its
lock and find nothing left to do. ``schema_version`` records what was applied.
Identifier columns sort bytewise (COLLATE "C"), as SQLite sorts them.
"""

from __future__ import annotations

from typing import Any

from .outbox_sql import PG_MIGRATION as OUTBOX_MIGRATION
from .outbox_sql import PG_USER_SEQ_MIGRATION as USER_SEQ_MIGRATION

MIGRATION_LOCK = 0x62726F6B  # pg_advisory_xact_lock key held while the schema is migrated

# (version, statements): applied in order, each version once, in one transaction.
# Identifier columns sort bytewise (COLLATE "C"), as SQLite sorts them.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE job_events (
            job_id TEXT COLLATE "C" NOT NULL,
            seq BIGINT NOT NULL,
            type TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (job_id, seq)
        )""",
        """CREATE TABLE job_latest_status (
            job_id TEXT COLLATE "C" PRIMARY KEY,
            seq BIGINT NOT NULL,
            payload TEXT NOT NULL
        )""",
        "CREATE SEQUENCE chat_msg_id AS BIGINT",
        """CREATE TABLE chat_messages (
            msg_id BIGINT PRIMARY KEY DEFAULT nextval('chat_msg_id'),
            conversation_id TEXT COLLATE "C" NOT NULL,
            send_id TEXT COLLATE "C" NOT NULL,
            payload TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        "ALTER SEQUENCE chat_msg_id OWNED BY chat_messages.msg_id",
        "CREATE INDEX chat_messages_by_conversation ON chat_messages (conversation_id, msg_id)",
        """CREATE TABLE chat_cursors (
            user_id TEXT COLLATE "C" NOT NULL,
            conversation_id TEXT COLLATE "C" NOT NULL,
            last_delivered BIGINT NOT NULL DEFAULT 0,
            last_read BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (user_id, conversation_id)
        )""",
        """CREATE TABLE chat_groups (
            group_id TEXT COLLATE "C" PRIMARY KEY,
            name TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE chat_group_members (
            group_id TEXT COLLATE "C" NOT NULL,
            user_id TEXT COLLATE "C" NOT NULL,
            added_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (group_id, user_id)
        )""",
        "CREATE INDEX chat_group_members_by_user ON chat_group_members (user_id, group_id)",
    ]),
    (2, [
        """CREATE TABLE job_idempotency_keys (
            job_id TEXT COLLATE "C" NOT NULL,
            idempotency_key TEXT COLLATE "C" NOT NULL,
            seq BIGINT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (job_id, idempotency_key)
        )""",
        "CREATE INDEX job_idempotency_keys_by_expiry ON job_idempotency_keys (expires_at)",
    ]),
    (3, OUTBOX_MIGRATION),  # the webhook outbox (broker/store/outbox_sql.py)
    (4, USER_SEQ_MIGRATION),  # cluster user.online/offline: newest transition recorded per user
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(connection: Any) -> tuple[int, int]:
    """Bring the schema to SCHEMA_VERSION (blocking; ``connection`` in autocommit mode).
    Returns (version found, version now). Safe when several nodes run it at once: the
    first one migrates, the others wait for its lock and find nothing left to do."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        connection.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                           "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        found = connection.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
        for version, statements in MIGRATIONS:
            if version > found:
                for statement in statements:
                    connection.execute(statement)
                connection.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
    return found, max(found, SCHEMA_VERSION)


def server_version(connection: Any) -> str:
    return connection.execute("SHOW server_version").fetchone()[0]
