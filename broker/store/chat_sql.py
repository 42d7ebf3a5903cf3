"""Chat's queries on the store: messages, delivery/read cursors, groups.

Writes go through :meth:`Store.write` (group-committed with everyone else's writes);
reads through :meth:`Store.read`. The SQL runs on SQLite and PostgreSQL alike
(``broker.store.sql``); message ids are the one difference (:func:`insert_messages`).

Every write that can leave a user with undelivered messages names that user
(``mail_for``), and the user's :func:`undelivered` query is marked as such
(``mail_of``): the SQLite store, the only writer of its file, keeps
:class:`WaitingMail` from them, so a login with nothing waiting costs no query.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

import attrs

from .sql import Statement


@attrs.frozen
class StoredMessage:
    msg_id: int
    conversation_id: str
    send_id: str
    payload: bytes
    prev_msg_id: int | None = None  # the conversation's message before this one (0: none; None: not known)


async def _rows(store: Any, sql: str, params: tuple = ()) -> list[tuple]:
    (rows,) = await store.read([(sql, params)])
    return rows


async def max_msg_id(store: Any) -> int:
    rows = await _rows(store, "SELECT COALESCE(MAX(msg_id), 0) FROM chat_messages")
    return int(rows[0][0])


async def insert_messages(store: Any, conversation_id: str, count: int,
                          render: Callable[[list[int]], list[StoredMessage]],
                          private_pairs: Iterable[tuple[str, str]], allocate: Callable[[], int],
                          recipients: Collection[str] = (),
                          also: Callable[[list[StoredMessage]], list[Statement]] | None = None) -> list[StoredMessage]:
    """Number ``count`` messages of one conversation, ``render`` them (ids ascending), and
    commit them; returns what was committed. Raises StoreError (nothing stored).
    ``recipients``: every user the messages may be offline mail for (the members of a
    private conversation or group; none for ``all``, which is never replayed).

    A store that shares its database with other nodes (``store.allocates_msg_ids``)
    numbers them itself, from one sequence in the inserting transaction, with the
    conversation locked until commit: ids are unique across nodes and a conversation's
    messages commit in id order, and each committed message knows its predecessor in the
    conversation (``prev_msg_id``). Otherwise ``allocate`` numbers them (this process is
    the only writer; ``prev_msg_id`` stays None). ``render`` may run in a worker thread,
    and again if a batch is retried. ``also``: more statements for the rendered messages,
    committed in the same transaction (the webhook outbox's ``chat.message`` rows).
    """
    pairs = list(private_pairs)
    committed: list[StoredMessage] = []

    def statements(ids: list[int]) -> list[Statement]:
        committed[:] = render(ids)
        return message_statements(committed, pairs) + (also(committed) if also is not None else [])

    if store.allocates_msg_ids:
        prev = await store.write_numbered(conversation_id, count, statements)
        links = [prev, *(m.msg_id for m in committed[:-1])]
        committed[:] = [attrs.evolve(m, prev_msg_id=link) for m, link in zip(committed, links, strict=True)]
    else:
        await store.write(statements([allocate() for _ in range(count)]), mail_for=recipients)
    return committed


async def messages_between(store: Any, conversation_id: str, after: int, upto: int,
                           limit: int) -> list[StoredMessage]:
    """The first ``limit`` messages of ``conversation_id`` with ``after`` < msgId <= ``upto``,
    in msgId order (their ``prev_msg_id`` is not read: each follows the one before)."""
    rows = await _rows(
        store,
        "SELECT msg_id, send_id, payload FROM chat_messages WHERE conversation_id = ? AND msg_id > ? AND msg_id <= ? "
        "ORDER BY msg_id LIMIT ?",
        (conversation_id, after, upto, limit),
    )
    return [StoredMessage(r[0], conversation_id, r[1], r[2].encode("utf-8")) for r in rows]


async def last_msg_id(store: Any, conversation_id: str) -> int:
    """The newest msgId of ``conversation_id`` (0 if it has none)."""
    rows = await _rows(store, "SELECT COALESCE(MAX(msg_id), 0) FROM chat_messages WHERE conversation_id = ?",
                       (conversation_id,))
    return int(rows[0][0])


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
            ("INSERT INTO chat_cursors (user_id, conversation_id) VALUES (?, ?) "
             "ON CONFLICT (user_id, conversation_id) DO NOTHING", cursor_rows)
        )
    return statements


_ADVANCE_DELIVERED = (
    "INSERT INTO chat_cursors (user_id, conversation_id, last_delivered) VALUES (?, ?, ?) "
    "ON CONFLICT (user_id, conversation_id) DO UPDATE SET last_delivered = excluded.last_delivered "
    "WHERE excluded.last_delivered > chat_cursors.last_delivered"
)


async def advance_delivered(store: Any, user_id: str, positions: dict[str, int]) -> None:
    """Delivery cursors only move forward (a cursor made here may have mail behind it)."""
    await store.write([(_ADVANCE_DELIVERED, [(user_id, conversation, msg_id) for conversation, msg_id in positions.items()])],
                      mail_for=(user_id,))


async def read_position(store: Any, user_id: str, conversation_id: str, msg_id: int) -> tuple[bool, int]:
    """Whether ``msg_id`` is a message of ``conversation_id``, and ``user_id``'s read
    position there (0: none yet)."""
    found, cursor = await store.read([
        ("SELECT 1 FROM chat_messages WHERE conversation_id = ? AND msg_id = ?", (conversation_id, msg_id)),
        ("SELECT last_read FROM chat_cursors WHERE user_id = ? AND conversation_id = ?", (user_id, conversation_id)),
    ])
    return bool(found), int(cursor[0][0]) if cursor else 0


async def mark_read(store: Any, user_id: str, conversation_id: str, msg_id: int,
                    also: Iterable[Statement] = ()) -> None:
    """Reading implies delivery: both cursors move forward to ``msg_id`` (with ``also``,
    the webhook outbox's ``chat.read`` rows, in the same transaction)."""
    await store.write([
        ("INSERT INTO chat_cursors (user_id, conversation_id, last_delivered, last_read) VALUES (?, ?, ?, ?) "
         "ON CONFLICT (user_id, conversation_id) DO UPDATE SET last_read = excluded.last_read "
         "WHERE excluded.last_read > chat_cursors.last_read",
         [(user_id, conversation_id, msg_id, msg_id)]),
        (_ADVANCE_DELIVERED, [(user_id, conversation_id, msg_id)]),
        *also,
    ], mail_for=(user_id,))


async def undelivered(store: Any, user_id: str, cap: int) -> tuple[list[StoredMessage], bool]:
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

    (rows,) = await store.read([(sql, (user_id, user_id, cap + 1))], mail_of=user_id)
    truncated = len(rows) > cap
    messages = [StoredMessage(r[0], r[1], r[2], r[3].encode("utf-8")) for r in rows[:cap]]
    messages.reverse()
    return messages, truncated


# The users :func:`undelivered` would answer with at least one message.
WAITING_USERS_SQL = (
    "SELECT DISTINCT c.user_id FROM chat_cursors c "
    "WHERE (c.conversation_id LIKE 'p:%' OR EXISTS ("
    "  SELECT 1 FROM chat_group_members g WHERE g.group_id = c.conversation_id AND g.user_id = c.user_id)) "
    "AND EXISTS (SELECT 1 FROM chat_messages m WHERE m.conversation_id = c.conversation_id "
    "  AND m.msg_id > c.last_delivered AND m.send_id != c.user_id)"
)


class WaitingMail:
    """The users who may have undelivered messages; for a user not here,
    :func:`undelivered` answers nothing. Kept by a store that is its database's only
    writer, in its own order of commits and reads: loaded at start
    (``WAITING_USERS_SQL``), a user is added when a write naming it commits
    (``mail_for``) and dropped when its ``undelivered`` query finds nothing. It may
    hold users with nothing waiting (a live delivery is not tracked): they cost one
    query at their next login, as without it."""

    __slots__ = ("_users",)

    def __init__(self, users: Iterable[str]) -> None:
        self._users = set(users)

    def __len__(self) -> int:
        return len(self._users)

    def may_have(self, user_id: str) -> bool:
        return user_id in self._users

    def add(self, users: Iterable[str]) -> None:
        self._users.update(users)

    def found_none(self, user_id: str) -> None:
        """The user's undelivered query returned no row (no commit since)."""
        self._users.discard(user_id)


async def history(store: Any, conversation_id: str, before: int | None, limit: int,
                  max_bytes: int = 1 << 62) -> tuple[list[bytes], bool]:
    """The newest payloads before ``before``, oldest first: up to ``limit`` of them and
    ``max_bytes`` (payloads plus a comma each; at least one payload, whatever its size).
    ``has_more``: older ones exist, because of either bound."""
    rows = await _rows(
        store,
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


async def cursors(store: Any, user_id: str) -> dict[str, tuple[int, int]]:
    """conversation -> (last_delivered, last_read) for ``user_id`` (tests, diagnostics)."""
    rows = await _rows(store, "SELECT conversation_id, last_delivered, last_read FROM chat_cursors WHERE user_id = ?",
                       (user_id,))
    return {r[0]: (r[1], r[2]) for r in rows}


# -- groups --------------------------------------------------------------------


async def group(store: Any, group_id: str) -> tuple[str, list[str]] | None:
    """(name, members sorted) or None if there is no such group."""
    rows, members = await store.read([
        ("SELECT name FROM chat_groups WHERE group_id = ?", (group_id,)),
        ("SELECT user_id FROM chat_group_members WHERE group_id = ? ORDER BY user_id", (group_id,)),
    ])
    if not rows:
        return None
    return rows[0][0], [m[0] for m in members]


async def groups_of(store: Any, user_id: str) -> list[str]:
    rows = await _rows(store, "SELECT group_id FROM chat_group_members WHERE user_id = ? ORDER BY group_id", (user_id,))
    return [r[0] for r in rows]


def create_group_statements(group_id: str, name: str) -> list[Statement]:
    return [("INSERT INTO chat_groups (group_id, name, created_at) VALUES (?, ?, ?) ON CONFLICT (group_id) DO NOTHING",
             [(group_id, name, time.time())])]


def add_members_statements(group_id: str, users: Iterable[str]) -> list[Statement]:
    """New members start after the group's newest stored message: earlier messages are
    history, not offline mail."""
    now = time.time()
    users = list(users)
    return [
        ("INSERT INTO chat_group_members (group_id, user_id, added_at) VALUES (?, ?, ?) "
         "ON CONFLICT (group_id, user_id) DO NOTHING",
         [(group_id, user, now) for user in users]),
        ("INSERT INTO chat_cursors (user_id, conversation_id, last_delivered) "
         "SELECT ?, ?, COALESCE(MAX(msg_id), 0) FROM chat_messages WHERE conversation_id = ? "
         "ON CONFLICT (user_id, conversation_id) DO UPDATE SET last_delivered = excluded.last_delivered "
         "WHERE excluded.last_delivered > chat_cursors.last_delivered",
         [(user, group_id, group_id) for user in users]),
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
