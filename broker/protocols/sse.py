"""Server-Sent Events framing for the fallback transport (docs/PROTOCOL.md, "The SSE transport").

The SSE stream carries exactly the messages ``/ws`` sends, each as one unnamed event
(``data: <json>``), so a browser's ``EventSource.onmessage`` and the broker's own client
see the same JSON. Around them, three things of the stream's own, none of which an
``onmessage`` listener sees:

* ``event: stream`` first, with the stream's secret id (``{"streamId": ...}``) that the
  client's POSTs carry in ``X-Broker-Stream``;
* heartbeats as comments, ``:ping <n>``, answered by a POSTed ``{"type":"pong","seq":n}``;
* ``event: close`` last, with the close code and reason a WebSocket close frame would
  carry (``{"code":4003,"reason":"slow consumer: ..."}``), then the response ends.

The response is streamed with no Content-Length: chunked to an HTTP/1.1 request,
delimited by the connection's close for HTTP/1.0 (what nginx speaks to upstreams by
default); ``X-Accel-Buffering: no`` keeps nginx from buffering it. Pure functions and
an incremental parser (for clients and tests); no I/O.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

import attrs

from .frames import OP_TEXT

STREAM_EVENT = "stream"
CLOSE_EVENT = "close"
STREAM_HEADER = "X-Broker-Stream"  # the POSTs' header naming their stream



def response_head(chunked: bool, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """The 200 that opens a stream: no Content-Length; ``chunked`` (HTTP/1.1) or ended by
    closing the connection (HTTP/1.0)."""
    lines = [
        "HTTP/1.1 200 OK",
        "Content-Type: text/event-stream; charset=utf-8",
        "Cache-Control: no-cache, no-store, no-transform",
        "X-Accel-Buffering: no",
        "Transfer-Encoding: chunked" if chunked else "Connection: close",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk (never empty: an empty chunk ends the body)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def event(data: bytes, name: str | None = None) -> bytes:
    """One event whose data is ``data`` (UTF-8); a line break inside is carried as
    several ``data:`` lines, which a reader joins with ``\\n`` again."""
    head = b"event: %b\n" % name.encode("ascii") if name is not None else b""
    if b"\n" in data or b"\r" in data:
        lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        return head + b"".join(b"data: %b\n" % line for line in lines) + b"\n"
    return head + b"data: " + data + b"\n\n"


def comment(text: str) -> bytes:
    """A comment (``:text``): it keeps proxies' idle timers from firing and dispatches nothing."""
    return b":" + text.encode("utf-8").replace(b"\n", b" ").replace(b"\r", b" ") + b"\n\n"


def ping_comment(seq: int) -> bytes:
    return comment(f"ping {seq}")


def stream_event(stream_id: str) -> bytes:
    return event(json.dumps({"streamId": stream_id}).encode(), STREAM_EVENT)


def close_event(code: int, reason: str) -> bytes:
    return event(json.dumps({"code": code, "reason": reason}, ensure_ascii=False).encode(), CLOSE_EVENT)


def text_payloads(frames: bytes) -> list[bytes]:
    """The payloads of one or more server text frames, back to back (unmasked, final:
    what :func:`~broker.protocols.frames.text_frame` makes; a room hands a batch of them
    to each member at once). Raises ValueError for anything else."""
    payloads = []
    view, offset, end = memoryview(frames), 0, len(frames)
    while offset < end:
        if end - offset < 2 or frames[offset] != 0x80 | OP_TEXT or frames[offset + 1] & 0x80:
            raise ValueError("not an unmasked final text frame")
        length = frames[offset + 1]
        if length < 126:
            start = offset + 2
        elif length == 126 and end - offset >= 4:
            start, length = offset + 4, struct.unpack_from("!H", frames, offset + 2)[0]
        elif length == 127 and end - offset >= 10:
            start, length = offset + 10, struct.unpack_from("!Q", frames, offset + 2)[0]
        else:
            raise ValueError("a truncated frame header")
        if start + length > end:
            raise ValueError("a frame longer than the bytes given")
        payloads.append(bytes(view[start:start + length]))
        offset = start + length
    if not payloads:
        raise ValueError("no frame")
    return payloads


def events_of(frames: bytes) -> bytes:
    """The events carrying the messages of ``frames`` (server text frames, back to back)."""
    return b"".join(event(payload) for payload in text_payloads(frames))


def pong_seq(message: str) -> int | None:
    """The ``seq`` of a POSTed ``{"type":"pong","seq":n}`` (the answer to ``:ping n``),
    else None: every other message goes to the session as it would over ``/ws``."""
    if len(message) > 64 or "pong" not in message:
        return None
    try:
        decoded = json.loads(message)
    except ValueError:
        return None
    if not isinstance(decoded, dict) or decoded.get("type") != "pong":
        return None
    seq = decoded.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 else None


@attrs.frozen
class Event:
    """A dispatched event: ``name`` is "message" unless the stream named it."""

    data: str
    name: str = "message"


@attrs.frozen
class Comment:
    text: str


class SseParser:
    """The reading side of the format (the WHATWG event-stream rules that matter here:
    ``event``/``data`` fields, comments, CRLF/CR/LF line ends, an optional space after
    the colon, a blank line dispatches). Feed it bytes as they come; it returns what is
    complete. ``max_line_bytes`` bounds a line without an end (ValueError beyond)."""

    def __init__(self, max_line_bytes: int = 1 << 20) -> None:
        self._buffer = b""
        self._name = ""
        self._data: list[str] = []
        self.max_line_bytes = max_line_bytes

    def feed(self, data: bytes) -> list[Event | Comment]:
        self._buffer += data
        out: list[Event | Comment] = []
        while True:
            line, found = self._next_line()
            if not found:
                if len(self._buffer) > self.max_line_bytes:
                    raise ValueError(f"an event-stream line longer than {self.max_line_bytes} bytes")
                return out
            if not line:
                if self._data:
                    out.append(Event("\n".join(self._data), self._name or "message"))
                self._name, self._data = "", []
                continue
            text = line.decode("utf-8", "replace")
            if text.startswith(":"):
                out.append(Comment(text[1:].strip()))
                continue
            field, _, value = text.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                self._data.append(value)
            elif field == "event":
                self._name = value

    def _next_line(self) -> tuple[bytes, bool]:
        buffer = self._buffer
        ends = [index for index in (buffer.find(b"\n"), buffer.find(b"\r")) if index >= 0]
        if not ends:
            return b"", False
        end = min(ends)
        if buffer[end:end + 1] == b"\r":
            if end + 1 == len(buffer):
                return b"", False  # a CR at the end: an LF may follow in the next read
            skip = 2 if buffer[end + 1:end + 2] == b"\n" else 1
        else:
            skip = 1
        self._buffer = buffer[end + skip:]
        return buffer[:end], True
