"""The OpenAPI 3.1 document of the server API, written from the route table the
router uses (:mod:`.routes`): every route, its parameters, body and answers, so the
document cannot say one thing while the router does another.

Every route but the document itself needs the API key (``Authorization: Bearer
<key>`` or ``X-API-Key: <key>``); every error answer has the JSON error shape.
"""

from __future__ import annotations

import re
from typing import Any

from .routes import Route, RouteTable

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "code", "message"],
    "properties": {
        "type": {"const": "error"},
        "code": {"type": "string"},
        "message": {"type": "string"},
        "timestamp": {"type": "string"},
    },
}

_AUTH_ANSWERS = {
    401: "missing or wrong API key",
    403: "the API is disabled: no key is configured",
}


def openapi_document(table: RouteTable, version: str, server_url: str = "/") -> dict[str, Any]:
    """The document for ``table`` (``server_url``: where the paths are rooted)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in table.routes:
        paths.setdefault(route.template, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "trio-broker server API",
            "version": version,
            "description": "Server-to-server API of the broker (docs/PROTOCOL.md section 8). "
                           "Every route but this document needs the API key.",
        },
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "schemas": {"Error": ERROR_SCHEMA},
        },
        "paths": paths,
    }


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": route.operation_id, "summary": route.summary, "tags": [route.tag]}
    if route.description:
        operation["description"] = route.description
    if route.public:
        operation["security"] = []
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": schema}
        for name, schema in route.params.items()
    ]
    parameters += [
        {"name": name, "in": "query", "required": name in route.required_query, "schema": schema}
        for name, schema in route.query.items()
    ]
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {"required": route.body_required, "content": {"application/json": {"schema": route.body}}}
    answers = dict(route.answers)
    responses: dict[str, Any] = {}
    for status, answer in sorted(answers.items()):
        schema = answer.schema if answer.schema is not None else {"$ref": "#/components/schemas/Error"}
        responses[str(status)] = {"description": answer.description,
                                  "content": {"application/json": {"schema": schema}}}
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if route.params or route.query or route.body is not None or not route.parse_body:
        responses.setdefault("400", {"description": "bad request: a parameter or the body is not valid", **error})
    if route.body is not None or not route.parse_body:
        responses.setdefault("413", {"description": "the body is larger than [server] max_body_bytes", **error})
    if not route.public:
        for status, description in _AUTH_ANSWERS.items():
            responses.setdefault(str(status), {"description": description, **error})
    operation["responses"] = responses
    return operation


def template_names(template: str) -> list[str]:
    """The parameter names of a path template, in order."""
    return re.findall(r"\{(\w+)\}", template)
