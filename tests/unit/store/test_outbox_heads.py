"""The webhook outbox's heads table (SQLite): after any mix of recording, delivering,
dead-lettering and re-sending, it names exactly the oldest pending row of each
(endpoint, key), as a scan of every pending row would find it."""

from __future__ import annotations

import random
import sqlite3

from broker.store import outbox_sql as sql

SCAN = ("SELECT o.endpoint, o.event_key, o.id FROM webhook_outbox o WHERE o.state = 0 AND NOT EXISTS ("
        "SELECT 1 FROM webhook_outbox p WHERE p.endpoint = o.endpoint AND p.event_key = o.event_key "
        "AND p.state = 0 AND p.id < o.id) ORDER BY o.id")


def open_outbox() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    for statement in sql.SQLITE_SCHEMA:
        db.execute(statement)
    return db


def apply(db: sqlite3.Connection, statement) -> None:
    text, rows = statement
    db.executemany(text, rows)


def heads(db: sqlite3.Connection) -> list[tuple[str, str, int]]:
    return db.execute("SELECT endpoint, event_key, head_id FROM webhook_heads ORDER BY head_id").fetchall()


def test_heads_follow_every_change_of_the_outbox():
    rng = random.Random(17)
    db = open_outbox()
    for step in range(3000):
        ids = [row[0] for row in db.execute("SELECT id, state FROM webhook_outbox").fetchall()]
        dead = [row[0] for row in db.execute("SELECT id FROM webhook_outbox WHERE state = 1").fetchall()]
        action = rng.random()
        if action < 0.4 or not ids:
            rows = [(f"e{rng.randrange(2)}", f"k{rng.randrange(5)}", f"msg_{step}_{i}", "chat.message", b"{}", 1.0)
                    for i in range(rng.randrange(1, 4))]
            apply(db, sql.insert_statement(rows))
        elif action < 0.65:
            apply(db, sql.delivered_statement(rng.choice(ids)))
        elif action < 0.8:
            apply(db, sql.dead_letter_statement(rng.choice(ids), "HTTP 400"))
        elif action < 0.9 and dead:
            apply(db, sql.resend_statement(rng.choice(dead), 2.0))
        elif action < 0.95:
            apply(db, sql.retry_later_statement(rng.choice(ids), 5.0, "timeout"))
        else:
            apply(db, sql.forget_endpoints_statement(f"e{rng.randrange(2)}"))
        assert heads(db) == db.execute(SCAN).fetchall(), step


def test_heads_query_takes_due_heads_in_id_order():
    db = open_outbox()
    apply(db, sql.insert_statement([("e", "a", "w1", "t", b"{}", 1.0), ("e", "a", "w2", "t", b"{}", 1.0),
                                    ("e", "b", "w3", "t", b"{}", 1.0)]))
    apply(db, sql.retry_later_statement(3, 10.0, "timeout"))  # b's head is not due before 10
    taken = db.execute(*sql.heads_query(5.0, 10)).fetchall()
    assert [row[3] for row in taken] == ["w1"]
    assert [row[3] for row in db.execute(*sql.heads_query(10.0, 10)).fetchall()] == ["w1", "w3"]
    apply(db, sql.delivered_statement(1))
    assert [row[3] for row in db.execute(*sql.heads_query(10.0, 10)).fetchall()] == ["w2", "w3"]


def test_an_outbox_written_before_the_heads_table_gets_its_heads_at_open():
    db = sqlite3.connect(":memory:")
    db.execute(sql.SQLITE_SCHEMA[0])
    apply(db, sql.insert_statement([("e", "a", "w1", "t", b"{}", 1.0), ("e", "a", "w2", "t", b"{}", 1.0)]))
    for statement in sql.SQLITE_SCHEMA:
        db.execute(statement)
    assert heads(db) == [("e", "a", 1)]
