"""The SQL both stores speak, and the seam where SQLite and PostgreSQL differ.

Statement builders (``store.py``, ``chat_store.py``) write SQL that SQLite (3.24+) and
PostgreSQL both accept, so each builder exists once:

- placeholders are ``?``; PostgreSQL's store rewrites them with :func:`pyformat`
  (cached per statement text). Builders never put ``?`` inside a string literal;
- "insert unless present" is ``INSERT ... ON CONFLICT (...) DO NOTHING``;
- a position that only moves forward is an upsert with a guard:
  ``ON CONFLICT (...) DO UPDATE SET col = excluded.col WHERE excluded.col > table.col``;
- a duplicate key is an error, never a silent overwrite (no ``INSERT OR REPLACE``).

Each store owns its schema (column types differ) and how it runs statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

Statement = tuple[str, Sequence[tuple[Any, ...]]]  # one SQL text, executed once per row of parameters
Query = tuple[str, tuple[Any, ...]]  # one SQL text and its parameters; the answer is its rows


def merge_statements(merged: list[tuple[str, list[tuple[Any, ...]]]], statements: Sequence[Statement]) -> None:
    """Append ``statements`` to ``merged``, a statement with the same SQL text as the last
    one merged taking its rows: one ``executemany`` for the writes of many callers."""
    for sql, rows in statements:
        if merged and merged[-1][0] == sql:
            merged[-1][1].extend(rows)
        else:
            merged.append((sql, list(rows)))


@lru_cache(maxsize=512)
def pyformat(sql: str) -> str:
    """``sql`` with psycopg's placeholders (``%s``; a literal ``%`` doubled). SQLite runs
    the shared SQL as written."""
    return sql.replace("%", "%%").replace("?", "%s")
