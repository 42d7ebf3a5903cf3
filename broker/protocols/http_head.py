"""A strict parser for the common HTTP/1.1 request head, and the response head to
answer it with: the keep-alive fast path of :mod:`broker.transport.http1`.

``parse_common_head`` accepts only what every well-behaved client sends: an
``HTTP/1.1`` request line, header lines ending in CRLF, exactly one ``Host``, at most
one ``Content-Length`` (digits), no ``Transfer-Encoding`` nor ``Expect``, a
``Connection`` of ``keep-alive`` only, and no obs-fold or stray control byte. It
also accepts the plain WebSocket upgrade: a ``GET`` with one ``Upgrade: websocket``,
one ``Connection`` listing ``Upgrade`` (and at most ``keep-alive`` beside it) and no
``Content-Length`` (``upgrade`` is then True; the caller checks the handshake
itself). For anything else it returns None and the caller hands the bytes to h11,
which knows every rule and every error status. So it never raises and never answers
an error itself: whatever it accepts, h11 parses to the same request (a property test
compares the two on random heads).

Sans-I/O: bytes in, values out, no trio.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from http import HTTPStatus

_REQUEST_LINE = re.compile(rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+) ([\x21-\x7e]+) HTTP/1\.1")
_HEADER_LINE = re.compile(rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*"
                          rb"((?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?)[ \t]*")
_FALLBACK_NAMES = frozenset({b"transfer-encoding", b"expect"})
_UPGRADE_CONNECTION = frozenset({b"upgrade", b"keep-alive"})  # Connection tokens an upgrade may list
_MAX_LENGTH_DIGITS = 18  # int() of more is h11's business


class RequestHead:
    """One request head: ``method`` and ``target`` as sent, ``headers`` as
    ``(lower-case name, value)``, ``raw_headers`` with the names as sent; ``upgrade``:
    a plain WebSocket upgrade read by :func:`parse_common_head`."""

    __slots__ = ("method", "target", "http_version", "headers", "raw_headers", "content_length", "upgrade")

    def __init__(self, method: bytes, target: bytes, http_version: bytes, headers: list[tuple[bytes, bytes]],
                 raw_headers: list[tuple[bytes, bytes]], content_length: int | None, upgrade: bool = False) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = headers
        self.raw_headers = raw_headers
        self.content_length = content_length
        self.upgrade = upgrade


def parse_common_head(head: bytes) -> RequestHead | None:
    """``head``: the bytes up to and including the first ``\\r\\n\\r\\n``. The request
    if it is of the common kind described above, else None (let h11 read it)."""
    if not head.endswith(b"\r\n\r\n"):
        return None
    lines = head[:-4].split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        return None
    headers: list[tuple[bytes, bytes]] = []
    raw: list[tuple[bytes, bytes]] = []
    hosts = 0
    length: int | None = None
    upgrade: bytes | None = None  # the Upgrade header's value
    connection: bytes | None = None  # the Connection header's value, lower case
    for line in lines[1:]:
        field = _HEADER_LINE.fullmatch(line)
        if field is None:
            return None  # obs-fold, bare CR or LF, a control byte, a space before the colon ...
        name, value = field.groups()
        lower = name.lower()
        if lower in _FALLBACK_NAMES:
            return None
        if lower == b"host":
            hosts += 1
        elif lower == b"content-length":
            if length is not None or not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
                return None
            length = int(value)
        elif lower == b"connection":
            if connection is not None:
                return None
            connection = value.lower()
        elif lower == b"upgrade":
            if upgrade is not None:
                return None
            upgrade = value
        headers.append((lower, value))
        raw.append((name, value))
    if hosts != 1:
        return None
    if upgrade is None:
        if connection is not None and connection != b"keep-alive":
            return None
        return RequestHead(match[1], match[2], b"1.1", headers, raw, length)
    if (match[1] != b"GET" or length is not None or upgrade.lower() != b"websocket" or connection is None
            or not _is_upgrade_connection(connection)):
        return None
    return RequestHead(match[1], match[2], b"1.1", headers, raw, None, upgrade=True)


def _is_upgrade_connection(value: bytes) -> bool:
    """``value`` (lower case) lists ``upgrade`` and nothing but ``keep-alive`` beside it."""
    tokens = [token.strip(b" \t") for token in value.split(b",")]
    return b"upgrade" in tokens and all(token in _UPGRADE_CONNECTION for token in tokens)


_PHRASES = {status.value: status.phrase.encode() for status in HTTPStatus}


BODILESS_STATUSES = (204, 304)


def response_head(status: int, content_type: str, length: int, headers: Sequence[tuple[str, str]] = (),
                  *, close: bool = False) -> bytes:
    """The head of a response with a body of ``length`` bytes. Header names and values
    come from the routes (never from the request), so they are not checked here. A 204
    or 304 has no body and says nothing of one: no Content-Type, no Content-Length (a
    304's ``Content-Length: 0`` would claim the cached representation is empty)."""
    if status in BODILESS_STATUSES:
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, _PHRASES.get(status, b"Error"))]
    else:
        parts = [b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                 % (status, _PHRASES.get(status, b"Error"), content_type.encode("latin-1"), length)]
    for name, value in headers:
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
