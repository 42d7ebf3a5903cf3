"""WebSocket server frames (RFC 6455 section 5.2), encoded once and shared.

Server-to-client frames are unmasked, so a frame's bytes are identical for every
recipient: a room encodes a broadcast once and hands the same ``bytes`` to every
member. Pure functions, no I/O.
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_FIN = 0x80
MAX_CONTROL_PAYLOAD = 125


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame carrying ``payload`` whole."""
    n = len(payload)
    if n < 126:
        header = bytes((_FIN | opcode, n))
    elif n < 0x10000:
        header = struct.pack("!BBH", _FIN | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", _FIN | opcode, 127, n)
    return header + payload


def text_frame(utf8: bytes) -> bytes:
    """A text message frame; ``utf8`` must already be valid UTF-8 (json output is)."""
    return encode_frame(OP_TEXT, utf8)


def binary_frame(data: bytes) -> bytes:
    return encode_frame(OP_BINARY, data)


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame; the reason is cut to fit the 125-byte control frame limit on a
    character boundary."""
    encoded = reason.encode("utf-8")
    if len(encoded) > MAX_CONTROL_PAYLOAD - 2:
        encoded = encoded[: MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(OP_CLOSE, struct.pack("!H", code) + encoded)


def ping_frame(payload: bytes = b"") -> bytes:
    if len(payload) > MAX_CONTROL_PAYLOAD:
        raise ValueError("ping payload longer than 125 bytes")
    return encode_frame(OP_PING, payload)
