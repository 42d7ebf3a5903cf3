"""Chat's queries on the store: messages, delivery/read cursors, groups.

Writes go through :meth:`Store.write` (group-committed with everyone else's writes);
reads through :meth:`Store.read`, in mailbox order after every write sent before them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import attrs
import sqlite_anyio

from .store import Statement, Store


@attrs.frozen
class StoredMessage:
    msg_id: int
    conversation_id: str
    send_id: str
    payload: bytes


async def _all(connection: sqlite_anyio.Connection, sql: str, params: tuple = ()) -> list[tuple]:
    cursor = await connection.cursor()
    await cursor.execute(sql, params)
    return await cursor.fetchall()


async def max_msg_id(store: Store) -> int:
    async def query(connection: sqlite_anyio.Connection) -> int:
        rows = await _all(connection, "SELECT COALESCE(MAX(msg_id), 0) FROM chat_messages")
        return int(rows[0][0])

    return await store.read(query)


async def last_msg_id(store: Store, conversation_id: str) -> int:
    """The newest msgId of ``conversation_id`` (0 if it has none)."""
    async def query(connection: sqlite_anyio.Connection) -> int:
        rows = await _all(connection, "SELECT COALESCE(MAX(msg_id), 0) FROM chat_messages WHERE conversation_id = ?",
                          (conversation_id,))
        return int(rows[0][0])

    return await store.read(query)


def message_statements(messages: list[StoredMessage], private_pairs: Iterable[tuple[str, str]]) -> list[Statement]:
    """Insert ``messages``; make sure each private conversation has a cursor for both users
    (so offline delivery finds it)."""
    now = time.time()
    statements: list[Statement] = [(
        "INSERT INTO chat_messages (msg_id, conversation_id, send_id, payload, created_at) VALUES (?, ?, ?, ?, ?)",
        [(m.msg_id, m.conversation_id, m.send_id, m.payload.decode("utf-8"), now) for m in messages],
    )]
    cursor_rows = [(user, conversation) for conversation, user in private_pairs]
    if cursor_rows:
        statements.append(
            ("INSERT OR IGNORE INTO chat_cursors (user_id, conversation_id) VALUES (?, ?)", cursor_rows)
        )
    return statements


async def advance_delivered(store: Store, user_id: str, positions: dict[str, int]) -> None:
    """Delivery cursors only move forward."""
    await store.write([(
        "INSERT INTO chat_cursors (user_id, conversation_id, last_delivered) VALUES (?, ?, ?) "
        "ON CONFLICT (user_id, conversation_id) DO UPDATE SET "
        "last_delivered = MAX(last_delivered, excluded.last_delivered)",
        [(user_id, conversation, msg_id) for conversation, msg_id in positions.items()],
    )])


async def mark_read(store: Store, user_id: str, conversation_id: str, msg_id: int) -> None:
    """Reading implies delivery: both cursors move forward to ``msg_id``."""
    await store.write([(
        "INSERT INTO chat_cursors (user_id, conversation_id, last_delivered, last_read) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (user_id, conversation_id) DO UPDATE SET "
        "last_delivered = MAX(last_delivered, excluded.last_delivered), "
        "last_read = MAX(last_read, excluded.last_read)",
        [(user_id, conversation_id, msg_id, msg_id)],
    )])


async def undelivered(store: Store, user_id: str, cap: int) -> tuple[list[StoredMessage], bool]:
    """The newest ``cap`` messages to ``user_id`` past its delivery cursors, oldest first,
    and whether older undelivered ones were left out. Groups count only while the user
    is a member; the user's own messages are not delivered back."""
    sql = (
        "SELECT m.msg_id, m.conversation_id, m.send_id, m.payload FROM chat_cursors c "
        "JOIN chat_messages m ON m.conversation_id = c.conversation_id AND m.msg_id > c.last_delivered "
        "WHERE c.user_id = ? AND m.send_id != ? AND (c.conversation_id LIKE 'p:%' OR EXISTS ("
        "  SELECT 1 FROM chat_group_members g WHERE g.group_id = c.conversation_id AND g.user_id = c.user_id)) "
        "ORDER BY m.msg_id DESC LIMIT ?"
    )

    async def query(connection: sqlite_anyio.Connection) -> tuple[list[StoredMessage], bool]:
        rows = await _all(connection, sql, (user_id, user_id, cap + 1))
        truncated = len(rows) > cap
        messages = [StoredMessage(r[0], r[1], r[2], r[3].encode("utf-8")) for r in rows[:cap]]
        messages.reverse()
        return messages, truncated

    return await store.read(query)


async def history(store: Store, conversation_id: str, before: int | None, limit: int,
                  max_bytes: int = 1 << 62) -> tuple[list[bytes], bool]:
    """The newest payloads before ``before``, oldest first: up to ``limit`` of them and
    ``max_bytes`` (payloads plus a comma each; at least one payload, whatever its size).
    ``has_more``: older ones exist, because of either bound."""
    async def query(connection: sqlite_anyio.Connection) -> tuple[list[bytes], bool]:
        rows = await _all(
            connection,
            "SELECT payload FROM chat_messages WHERE conversation_id = ? AND msg_id < ? ORDER BY msg_id DESC LIMIT ?",
            (conversation_id, before if before is not None else 2**63 - 1, limit + 1),
        )
        page: list[bytes] = []
        size = 0
        for row in rows[:limit]:
            payload = row[0].encode("utf-8")
            if page and size + len(payload) + 1 > max_bytes:
                return page[::-1], True
            page.append(payload)
            size += len(payload) + 1
        return page[::-1], len(rows) > limit

    return await store.read(query)


async def cursors(store: Store, user_id: str) -> dict[str, tuple[int, int]]:
    """conversation -> (last_delivered, last_read) for ``user_id`` (tests, diagnostics)."""
    async def query(connection: sqlite_anyio.Connection) -> dict[str, tuple[int, int]]:
        rows = await _all(connection, "SELECT conversation_id, last_delivered, last_read FROM chat_cursors "
                                      "WHERE user_id = ?", (user_id,))
        return {r[0]: (r[1], r[2]) for r in rows}

    return await store.read(query)


# -- groups --------------------------------------------------------------------


async def group(store: Store, group_id: str) -> tuple[str, list[str]] | None:
    """(name, members sorted) or None if there is no such group."""
    async def query(connection: sqlite_anyio.Connection) -> tuple[str, list[str]] | None:
        rows = await _all(connection, "SELECT name FROM chat_groups WHERE group_id = ?", (group_id,))
        if not rows:
            return None
        members = await _all(connection, "SELECT user_id FROM chat_group_members WHERE group_id = ? ORDER BY user_id",
                             (group_id,))
        return rows[0][0], [m[0] for m in members]

    return await store.read(query)


async def groups_of(store: Store, user_id: str) -> list[str]:
    async def query(connection: sqlite_anyio.Connection) -> list[str]:
        rows = await _all(connection, "SELECT group_id FROM chat_group_members WHERE user_id = ? ORDER BY group_id",
                          (user_id,))
        return [r[0] for r in rows]

    return await store.read(query)


def create_group_statements(group_id: str, name: str) -> list[Statement]:
    return [("INSERT OR IGNORE INTO chat_groups (group_id, name, created_at) VALUES (?, ?, ?)",
             [(group_id, name, time.time())])]


def add_members_statements(group_id: str, users: Iterable[str], last_msg_id: int) -> list[Statement]:
    """New members start after ``last_msg_id``: earlier messages are history, not offline mail."""
    now = time.time()
    users = list(users)
    return [
        ("INSERT OR IGNORE INTO chat_group_members (group_id, user_id, added_at) VALUES (?, ?, ?)",
         [(group_id, user, now) for user in users]),
        ("INSERT INTO chat_cursors (user_id, conversation_id, last_delivered) VALUES (?, ?, ?) "
         "ON CONFLICT (user_id, conversation_id) DO UPDATE SET "
         "last_delivered = MAX(last_delivered, excluded.last_delivered)",
         [(user, group_id, last_msg_id) for user in users]),
    ]


def remove_members_statements(group_id: str, users: Iterable[str]) -> list[Statement]:
    users = list(users)
    return [
        ("DELETE FROM chat_group_members WHERE group_id = ? AND user_id = ?", [(group_id, u) for u in users]),
        ("DELETE FROM chat_cursors WHERE conversation_id = ? AND user_id = ?", [(group_id, u) for u in users]),
    ]


def delete_group_statements(group_id: str) -> list[Statement]:
    return [
        ("DELETE FROM chat_group_members WHERE group_id = ?", [(group_id,)]),
        ("DELETE FROM chat_cursors WHERE conversation_id = ?", [(group_id,)]),
        ("DELETE FROM chat_messages WHERE conversation_id = ?", [(group_id,)]),
        ("DELETE FROM chat_groups WHERE group_id = ?", [(group_id,)]),
    ]
