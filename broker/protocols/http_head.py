"""A strict parser for the common HTTP/1.1 request head, and the response head to
answer it with: the keep-alive fast path of :mod:`broker.http1`.

``parse_common_head`` accepts only what every well-behaved client sends: an
``HTTP/1.1`` request line, header lines ending in CRLF, exactly one ``Host``, at most
one ``Content-Length`` (digits), no ``Transfer-Encoding``, ``Expect``, ``Upgrade``
nor a ``Connection`` other than ``keep-alive``, and no obs-fold or stray control
byte. For anything else it returns None and the caller hands the bytes to h11, which
knows every rule and every error status. So it never raises and never answers an
error itself: whatever it accepts, h11 parses to the same request (a property test
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
_FALLBACK_NAMES = frozenset({b"transfer-encoding", b"expect", b"upgrade"})
_MAX_LENGTH_DIGITS = 18  # int() of more is h11's business


class RequestHead:
    """One request head: ``method`` and ``target`` as sent, ``headers`` as
    ``(lower-case name, value)``, ``raw_headers`` with the names as sent."""

    __slots__ = ("method", "target", "http_version", "headers", "raw_headers", "content_length")

    def __init__(self, method: bytes, target: bytes, http_version: bytes, headers: list[tuple[bytes, bytes]],
                 raw_headers: list[tuple[bytes, bytes]], content_length: int | None) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = headers
        self.raw_headers = raw_headers
        self.content_length = content_length


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
        elif lower == b"connection" and value.lower() != b"keep-alive":
            return None
        headers.append((lower, value))
        raw.append((name, value))
    if hosts != 1:
        return None
    return RequestHead(match[1], match[2], b"1.1", headers, raw, length)


_PHRASES = {status.value: status.phrase.encode() for status in HTTPStatus}


def response_head(status: int, content_type: str, length: int, headers: Sequence[tuple[str, str]] = (),
                  *, close: bool = False) -> bytes:
    """The head of a response with a body of ``length`` bytes. Header names and values
    come from the routes (never from the request), so they are not checked here."""
    parts = [b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
             % (status, _PHRASES.get(status, b"Error"), content_type.encode("latin-1"), length)]
    for name, value in headers:
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
