"""What text the broker accepts from outside: Unicode scalar values only, and user ids
without control, format (bidi, zero-width) or line-separator characters. Pure.

JSON may carry a lone surrogate (``"\\ud800"``): ``json.loads`` gives a ``str`` that
cannot be encoded as UTF-8, so it would fail later, far from the request that brought
it (in a store statement, a Redis command, an encoded error frame) and take down
whatever shared actor met it first. Every decoder here refuses it at once instead
(:func:`loads_json`, :func:`has_lone_surrogate`).
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any, TypeGuard

from .codes import ErrorCode, ProtocolError

# A surrogate in the text itself, or a JSON escape of one (either half of a pair: a
# pair makes one scalar value, so a hit only says "look at the decoded strings").
_MAY_HOLD_SURROGATE = re.compile(r"[\ud800-\udfff]|\\u[dD][89a-fA-F]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
MAX_USER_ID = 128
# Unicode categories a user id may not hold: controls (NUL, newline...), format
# characters (bidi marks and overrides, zero-width), surrogates, line/paragraph separators.
_REFUSED_IN_USER_IDS = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))
LONE_SURROGATE = "strings must be Unicode scalar values (a lone surrogate such as \\ud800 is refused)"


def has_lone_surrogate(value: Any) -> bool:
    """True if a string anywhere in the decoded JSON ``value`` (keys included) holds a
    surrogate code point. Iterative: nesting depth is json's concern, not a recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def loads_json(text: str, what: str = "message") -> Any:
    """``json.loads(text)``, or raise BAD_REQUEST saying why (not JSON; a string that is
    not made of Unicode scalar values). The common case costs one regex scan of the text."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{what} is not valid JSON: {_first_line(exc)}") from None
    if _MAY_HOLD_SURROGATE.search(text) and has_lone_surrogate(value):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{what}: {LONE_SURROGATE}")
    return value


def is_user_id(value: object) -> TypeGuard[str]:
    """1-128 characters, no leading or trailing space, and no control, format (bidi,
    zero-width), surrogate or line-separator character: safe to show, log and store."""
    if not isinstance(value, str) or not value or len(value) > MAX_USER_ID or value != value.strip():
        return False
    if value.isascii():
        return value.isprintable()  # ASCII: only the controls are not printable
    return not any(unicodedata.category(c) in _REFUSED_IN_USER_IDS for c in value)


USER_ID_RULE = (f"a user id of 1-{MAX_USER_ID} characters, without surrounding spaces, control characters, "
                "line breaks or bidi/format marks")


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n")[0][:120]
