"""The JSON Schema subset the server API declares, and the check that enforces it.

Each route of the API states its path parameters, query parameters and body as JSON
Schema (in the OpenAPI document it serves); :func:`check` validates a request
against those very schemas, so what the document promises and what the router
accepts are one thing. Only the keywords used by the routes are understood:
``type`` (one or a list), ``properties``, ``required``, ``additionalProperties``
(false), ``minLength``/``maxLength``, ``pattern`` (matched against the whole
string), ``minimum``/``maximum``, ``enum``, ``items``/``minItems``/``maxItems``.
A keyword outside that list in a request schema is a bug in the route (an assertion
the tests meet); bad input raises :class:`SchemaError`.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from ..protocols.messages import MAX_SEQ
from ..protocols.text import USER_ID_RULE, is_user_id

KNOWN = frozenset({"type", "properties", "required", "additionalProperties", "minLength", "maxLength", "pattern",
                   "minimum", "maximum", "enum", "items", "minItems", "maxItems", "description", "default",
                   "examples", "format"})

# Shared pieces of schemas (ids as docs/PROTOCOL.md defines them)
ID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"}
IDEMPOTENCY_KEY = {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"}
# "format": "user-id" is checked by the router with protocols.text.is_user_id (controls, bidi and
# format marks, line separators refused: PROTOCOL.md section 4); to other readers it is an annotation
USER_ID = {"type": "string", "minLength": 1, "maxLength": 128, "format": "user-id"}
CONVERSATION_ID = {"type": "string", "maxLength": 300,
                   "pattern": "^(p:[0-9]{1,3}:[\\s\\S]+|[A-Za-z0-9][A-Za-z0-9._:@-]{0,127})$",
                   "description": 'a group id, "all", or a private id as the broker sends it (p:<len>:<a>:<b>)'}
SEQ = {"type": "integer", "minimum": 0, "maximum": MAX_SEQ}
MSG_ID = {"type": "integer", "minimum": 1, "maximum": MAX_SEQ}
TIMESTAMP = {"type": "string"}


class SchemaError(Exception):
    """``value`` does not match the schema; the message says where and why."""


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "object": (dict,), "array": (list,), "null": (type(None),),
}


def _is(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[kind])


@functools.cache
def _pattern(text: str) -> re.Pattern[str]:
    """A schema's pattern, anchored at both ends with ``\\Z`` (Python's ``$`` also
    matches before a final newline; ECMAScript's, which the document means, does not).
    Patterns use explicit classes (``[\\s\\S]``, not ``.``): the two dialects agree on those."""
    return re.compile(text.removeprefix("^").removesuffix("$") + r"\Z")


def check(schema: dict[str, Any], value: Any, where: str) -> None:
    """Raise :class:`SchemaError` naming ``where`` unless ``value`` matches ``schema``."""
    unknown = schema.keys() - KNOWN
    assert not unknown, f"schema keyword(s) not understood: {sorted(unknown)}"
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, kind) for kind in kinds):
            raise SchemaError(f"{where} must be {' or '.join(kinds)}")
    if "enum" in schema and not any(value == option and type(value) is type(option) for option in schema["enum"]):
        raise SchemaError(f"{where} must be one of {', '.join(map(str, schema['enum']))}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            raise SchemaError(f"{where} must be {schema.get('minLength', 0)}-{schema.get('maxLength', 'any')} "
                              "characters long")
        if "pattern" in schema and not _pattern(schema["pattern"]).match(value):
            raise SchemaError(f"{where} has characters or a form it may not have")
        if schema.get("format") == "user-id" and not is_user_id(value):
            raise SchemaError(f"{where} must be {USER_ID_RULE}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            raise SchemaError(f"{where} must be from {schema.get('minimum', '-inf')} to {schema.get('maximum', 'inf')}")
    elif isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            raise SchemaError(f"{where} must have {schema.get('minItems', 0)}-{schema.get('maxItems', 'any')} items")
        if "items" in schema:
            for index, item in enumerate(value):
                check(schema["items"], item, f"{where}[{index}]")
    elif isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                raise SchemaError(f'{where} needs "{name}"')
        if schema.get("additionalProperties") is False:
            extra = sorted(value.keys() - properties.keys())
            if extra:
                raise SchemaError(f'{where} may not have "{extra[0][:40]}"')
        for name, item in value.items():
            if name in properties:
                check(properties[name], item, f'"{name}"')


def obj(properties: dict[str, Any], required: tuple[str, ...] = (), closed: bool = True,
        description: str | None = None) -> dict[str, Any]:
    """An object schema (``closed``: no other properties)."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema
