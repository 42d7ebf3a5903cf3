"""The server API's route table: one list of routes that both routes requests and
writes the OpenAPI document (:mod:`.openapi`), so the two cannot drift.

A :class:`Route` is a method, a path template (``/api/jobs/{jobId}``), a handler and
the schemas of its path parameters, query parameters, body and answers.
:meth:`RouteTable.resolve` finds the route of a request (404 for no template, 405
with ``Allow`` for a template without that method) and checks the request against
the route's schemas (400, with the JSON error shape) before the handler runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, unquote

import attrs

from ..protocols import ErrorCode, error_message
from ..protocols.text import LONE_SURROGATE, has_lone_surrogate
from ..transport.http1 import HttpError
from .schema import SchemaError, check

ReadBody = Callable[[], Awaitable[bytes]]

_STATUS_CODES = {400: ErrorCode.BAD_REQUEST, 401: ErrorCode.UNAUTHORIZED, 403: ErrorCode.FORBIDDEN,
                 404: ErrorCode.NOT_FOUND, 405: ErrorCode.BAD_REQUEST, 409: ErrorCode.BAD_REQUEST,
                 413: ErrorCode.MESSAGE_TOO_BIG, 503: ErrorCode.UNAVAILABLE}


@attrs.frozen
class ApiResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = attrs.field(factory=list)


def json_response(status: int, value: Any) -> ApiResponse:
    return ApiResponse(status, json.dumps(value, ensure_ascii=False).encode("utf-8"))


def error_response(status: int, message: str, headers: list[tuple[str, str]] | None = None,
                   code: ErrorCode | None = None, **extra: Any) -> ApiResponse:
    """The JSON error shape: ``{"type":"error","code":...,"message":...,"timestamp":...}``."""
    if code is None:
        code = _STATUS_CODES.get(status, ErrorCode.BAD_REQUEST if status < 500 else ErrorCode.INTERNAL_ERROR)
    return ApiResponse(status, error_message(code, message, **extra), headers=headers or [])


@attrs.frozen
class ApiRequest:
    """A request that matched a route and passed its checks."""

    method: str
    path: str
    params: dict[str, str]  # path parameters, percent-decoded
    query: dict[str, Any]  # declared query parameters, converted to their schema's type
    body: Any  # the decoded JSON body (None for a route that takes none)
    raw_body: bytes


Handler = Callable[[ApiRequest], Awaitable[ApiResponse]]


@attrs.frozen
class Answer:
    """One documented answer of a route."""

    description: str
    schema: dict[str, Any] | None = None  # None: the JSON error shape


@attrs.frozen
class Route:
    method: str
    template: str  # "/api/jobs/{jobId}": each {name} is one path segment
    handler: Handler
    operation_id: str
    summary: str
    answers: dict[int, Answer]
    params: dict[str, dict[str, Any]] = attrs.field(factory=dict)  # name -> schema
    query: dict[str, dict[str, Any]] = attrs.field(factory=dict)  # name -> schema (with "default" if optional)
    required_query: tuple[str, ...] = ()
    body: dict[str, Any] | None = None  # the JSON body's schema; None: no body
    body_required: bool = True  # False: an empty body stands for {}
    public: bool = False  # no API key needed
    tag: str = "api"
    description: str = ""
    parse_body: bool = True  # False: the handler validates the raw body itself (publish: an object or an array)

    def pattern(self) -> re.Pattern[str]:
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.template))
        return re.compile(regex + r"\Z")


class RouteTable:
    def __init__(self, routes: list[Route]) -> None:
        self.routes = list(routes)
        seen = {(r.method, r.template) for r in self.routes}
        assert len(seen) == len(self.routes), "a route is declared twice"
        self._compiled = [(route, route.pattern()) for route in self.routes]

    def find(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for ``method`` and ``path`` with its raw path parameters; HttpError
        404 (no template matches) or 405 with ``Allow`` (none with this method)."""
        allowed: list[str] = []
        for route, pattern in self._compiled:
            found = pattern.match(path)
            if found is None:
                continue
            if route.method == method:
                return route, found.groupdict()
            allowed.append(route.method)
        if allowed:
            raise HttpError(405, f"method {method} not allowed here (use {' or '.join(allowed)})",
                            [("Allow", ", ".join(allowed))])
        raise HttpError(404, "no API route for this path")

    async def resolve(self, route: Route, raw_params: dict[str, str], method: str, path: str, query: str,
                      read_body: ReadBody) -> ApiRequest:
        """Check the request against ``route``'s schemas: HttpError 400 (or 413 from
        reading the body) naming what is wrong."""
        try:
            params = {name: unquote(value, errors="strict") for name, value in raw_params.items()}
        except UnicodeDecodeError:
            raise HttpError(400, "a path parameter is not UTF-8") from None
        values = _query(query)
        try:
            for name, schema in route.params.items():
                check(schema, params[name], f"path parameter {name!r}")
            converted: dict[str, Any] = {}
            for name, schema in route.query.items():
                if name not in values:
                    if name in route.required_query:
                        raise SchemaError(f"query parameter {name!r} is required")
                    if "default" in schema:
                        converted[name] = schema["default"]
                    continue
                converted[name] = _convert(values[name], schema, name)
                check(schema, converted[name], f"query parameter {name!r}")
        except SchemaError as exc:
            raise HttpError(400, str(exc)) from None
        body: Any = None
        raw = b""
        if route.body is not None or not route.parse_body:
            raw = await read_body()
        if route.body is not None and route.parse_body:
            body = decode_json(raw) if raw.strip() or route.body_required else {}
            try:
                check(route.body, body, "the body")
            except SchemaError as exc:
                raise HttpError(400, str(exc)) from None
        return ApiRequest(method, path, params, converted, body, raw)


def decode_json(raw: bytes) -> Any:
    """A JSON body (UTF-8, no NaN/Infinity); HttpError 400 otherwise."""
    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HttpError(400, "the body is not valid JSON") from None
    if has_lone_surrogate(value):  # legal JSON, but no store or client can encode it
        raise HttpError(400, f"the body: {LONE_SURROGATE}")
    return value


def _query(query: str) -> dict[str, str]:
    """The query's parameters (the last of a repeated name wins)."""
    try:
        return dict(parse_qsl(query, keep_blank_values=True, errors="strict", max_num_fields=64))
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "the query string is not valid") from None


def _convert(text: str, schema: dict[str, Any], name: str) -> Any:
    """A query parameter's text as its schema's type (integers in plain decimal)."""
    if schema.get("type") == "integer":
        if not re.fullmatch(r"-?[0-9]{1,19}", text):
            raise SchemaError(f"query parameter {name!r} must be an integer")
        return int(text)
    return text
