"""The SQL both stores speak, and the seam where SQLite and PostgreSQL differ.

Statement builders (``store.py``, ``chat_store.py``) write SQL that SQLite (3.24+) and
PostgreSQL both accept, so each builder exists once:

- placeholders are ``?``; a store's :class:`Dialect` rewrites them once per statement
  text (PostgreSQL's driver wants ``%s``, and a literal ``%`` becomes ``%%``). Builders
  never put ``?`` inside a string literal;
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

import attrs

Statement = tuple[str, Sequence[tuple[Any, ...]]]  # one SQL text, executed once per row of parameters
Query = tuple[str, tuple[Any, ...]]  # one SQL text and its parameters; the answer is its rows


@attrs.frozen
class Dialect:
    name: str
    percent_placeholders: bool  # %s instead of ?

    def translate(self, sql: str) -> str:
        """``sql`` as this engine's driver wants it."""
        return _to_percent(sql) if self.percent_placeholders else sql


@lru_cache(maxsize=512)
def _to_percent(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


SQLITE = Dialect("sqlite", percent_placeholders=False)
POSTGRES = Dialect("postgresql", percent_placeholders=True)
