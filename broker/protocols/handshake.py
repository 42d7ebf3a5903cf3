"""The server side of the WebSocket opening handshake (RFC 6455 section 4.2), sans I/O.

``validate_upgrade`` checks a parsed request head (from h11, wsproto or anything
else) and returns what the handshake needs, or raises :class:`HandshakeError`
carrying the exact reply: a status, a one-line reason for the text body, and the
headers to add (426 names the version we speak). ``accept_key`` computes
``Sec-WebSocket-Accept``. No trio, no sockets: plain functions on bytes.

::

    try:
        upgrade = validate_upgrade(request.method, request.http_version, request.headers)
    except HandshakeError as exc:
        reply(exc.status, exc.message, exc.headers)
    else:
        send_101([("Sec-WebSocket-Accept", accept_key(upgrade.key)), ...])
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence

import attrs

WEBSOCKET_VERSION = "13"
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token

Headers = Sequence[tuple[bytes, bytes]]


class HandshakeError(Exception):
    """The upgrade is refused: answer ``status`` with ``message`` (one line of text) as
    the body and ``headers`` added, then close the connection."""

    def __init__(self, status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = tuple(headers)


@attrs.frozen
class UpgradeRequest:
    """A valid upgrade: the client's key (as sent) and what it offers, in its order."""

    key: bytes
    subprotocols: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()  # one offer each, parameters included: "permessage-deflate; x=1"


def accept_key(key: bytes | str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 4.2.2)."""
    raw = key.encode("ascii") if isinstance(key, str) else key
    return base64.b64encode(hashlib.sha1(raw + _ACCEPT_GUID).digest()).decode("ascii")


def wants_websocket(headers: Headers) -> bool:
    """True if the request asks to upgrade to WebSocket (``Upgrade: websocket``): such a
    request gets a 101 or a refusal saying why, never a plain answer."""
    return "websocket" in _tokens(headers, b"upgrade")


def validate_upgrade(method: bytes | str, http_version: bytes | str, headers: Headers) -> UpgradeRequest:
    """Check an upgrade request head (RFC 6455 4.2.1); header names in any case.

    Raises HandshakeError: 405 for a method other than GET; 400 for HTTP/1.0, a missing
    ``Upgrade: websocket`` or ``Connection: Upgrade``, a missing, repeated or malformed
    ``Sec-WebSocket-Key`` (not base64 of 16 bytes) or a malformed subprotocol list;
    426 with ``Sec-WebSocket-Version: 13`` for a missing or other version.
    """
    if _text(method) != "GET":
        raise HandshakeError(405, "a WebSocket upgrade must be a GET request", [("Allow", "GET")])
    if _text(http_version) != "1.1":
        raise HandshakeError(400, "a WebSocket upgrade needs HTTP/1.1")
    if "websocket" not in _tokens(headers, b"upgrade"):
        raise HandshakeError(400, "the Upgrade header must be 'websocket'")
    if "upgrade" not in _tokens(headers, b"connection"):
        raise HandshakeError(400, "the Connection header must include 'Upgrade'")
    versions = _values(headers, b"sec-websocket-version")
    if [v.strip() for v in versions] != [WEBSOCKET_VERSION.encode()]:
        raise HandshakeError(426, f"unsupported Sec-WebSocket-Version: this server speaks {WEBSOCKET_VERSION}",
                             [("Sec-WebSocket-Version", WEBSOCKET_VERSION)])
    keys = _values(headers, b"sec-websocket-key")
    if not keys:
        raise HandshakeError(400, "missing Sec-WebSocket-Key header")
    if len(keys) > 1:
        raise HandshakeError(400, "more than one Sec-WebSocket-Key header")
    key = keys[0].strip()
    if not _is_nonce(key):
        raise HandshakeError(400, "Sec-WebSocket-Key must be the base64 encoding of 16 bytes")
    subprotocols = _list(headers, b"sec-websocket-protocol")
    for name in subprotocols:
        if not _TOKEN.match(name):
            raise HandshakeError(400, "Sec-WebSocket-Protocol must be a comma-separated list of tokens")
    return UpgradeRequest(key, tuple(subprotocols), tuple(_list(headers, b"sec-websocket-extensions")))


def _is_nonce(key: bytes) -> bool:
    if len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        return False


def _text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _values(headers: Headers, name: bytes) -> list[bytes]:
    return [value for key, value in headers if key.lower() == name]


def _list(headers: Headers, name: bytes) -> list[str]:
    """A comma-separated header's items, from every occurrence, in order, empties dropped."""
    return [item.strip() for value in _values(headers, name)
            for item in value.decode("latin-1").split(",") if item.strip()]


def _tokens(headers: Headers, name: bytes) -> set[str]:
    return {item.lower() for item in _list(headers, name)}
