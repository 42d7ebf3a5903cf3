"""Two plain answers of the HTTP front: ``GET /`` (what this broker serves, by path) and
the Bearer check ``[server] metrics_token`` puts in front of ``/metrics``."""

from __future__ import annotations

import hmac
import json

from ..config.loader import BrowserConfig, ServerConfig
from ..transport.http1 import header as _header


def bearer_matches(headers: list[tuple[bytes, bytes]], secret: str) -> bool:
    """``Authorization: Bearer <secret>``, compared in constant time."""
    value = _header(headers, b"authorization")
    if value is None:
        return False
    scheme, _, token = value.decode("latin-1").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), secret.encode())


def endpoint_index(server: ServerConfig, browser: BrowserConfig, proxy_paths: list[str]) -> bytes:
    """``GET /``: what this broker serves, by path (JSON, one line)."""
    endpoints: dict[str, str] = {
        "websocket": server.ws_path,
        "health": server.health_path,
        "metrics": server.metrics_path + (" (Authorization: Bearer <metrics token>)" if server.metrics_token else ""),
        "publish": f"POST {server.publish_path} (Authorization: Bearer <API key>)",
        "groups": f"{server.api_prefix}/groups (Authorization: Bearer <API key>)",
    }
    if browser.console_path:
        endpoints["console"] = browser.console_path
    if browser.admin_path:
        endpoints["admin"] = browser.admin_path
    endpoints["api"] = f"{server.api_prefix}/openapi.json (the server API's document; the routes need the API key)"
    if browser.client_path:
        endpoints["client"] = browser.client_path + "/broker-client.mjs"
    if browser.sse_path:
        endpoints["sse"] = f"GET {browser.sse_path} (event stream), POST {browser.sse_path} (X-Broker-Stream)"
    for path in proxy_paths:
        endpoints[f"proxy {path}"] = path
    body = {"service": "trio-broker", "endpoints": endpoints,
            "hint": f"open {browser.console_path} in a browser to try it" if browser.console_path
            else f"connect a WebSocket client to {server.ws_path}"}
    return (json.dumps(body) + "\n").encode()
