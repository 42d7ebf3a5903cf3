"""permessage-deflate (RFC 7692), sans I/O: the server's answer to an offer, and server
frames compressed once for every recipient.

The server always answers with ``server_no_context_takeover`` (RFC 7692 section
7.1.1.1 lets it; every compliant client accepts it): each message it sends is
compressed on its own, so a broadcast is compressed once and the *same bytes* go to
every member that negotiated the extension, with no compressor state per connection on
the send side. That is what makes compression cheap for a broker: one deflate per
broadcast, not one per subscriber.

The answer also carries ``client_no_context_takeover`` (section 7.1.1.2 lets a server
add it unasked): each client message is inflated on its own and its inflater freed,
so an idle connection keeps no zlib state in either direction (a kept inflater costs
~40 KB, three times what a whole idle connection costs today). Inflating is bounded by
the message size limit (:mod:`broker.transport.deflate`).

::

    params = negotiate(upgrade.extensions)          # None: no offer we accept
    header = params.response() if params else None  # Sec-WebSocket-Extensions
    deflated = deflate_frames(frames, params.server_window_bits, min_bytes=1024)
"""

from __future__ import annotations

import struct
import zlib

import attrs

from .frames import OP_BINARY, OP_TEXT

NAME = "permessage-deflate"
_RSV1 = 0x40
_TAIL = b"\x00\x00\xff\xff"  # the empty stored block every sync flush ends with (RFC 7692 7.2.1)
LEVEL = 6  # zlib's default: on JSON, 1 saves ~15 % less than 6 for ~30 % less CPU; 9 buys nothing more


@attrs.frozen
class DeflateParams:
    """What the server agreed to: the window it compresses with (``server_max_window_bits``
    asked by the client, else 15) and the one the client compresses with (15 unless the
    offer named ``client_max_window_bits``). No context is kept either way."""

    server_window_bits: int = 15
    client_window_bits: int = 15
    answer_client_window_bits: bool = False  # the offer named client_max_window_bits: say which we use

    def response(self) -> str:
        """The ``Sec-WebSocket-Extensions`` value of the 101."""
        parameters = [NAME, "server_no_context_takeover", "client_no_context_takeover"]
        if self.server_window_bits != 15:
            parameters.append(f"server_max_window_bits={self.server_window_bits}")
        if self.answer_client_window_bits:
            parameters.append(f"client_max_window_bits={self.client_window_bits}")
        return "; ".join(parameters)


def negotiate(offers: tuple[str, ...] | list[str]) -> DeflateParams | None:
    """The first ``permessage-deflate`` offer we can accept, in the client's order, or
    None. An offer with an unknown or repeated parameter, or a bad window size, is
    declined (RFC 7692 section 5); so is ``server_max_window_bits=8``, which zlib cannot
    produce for raw deflate (it widens the window to 9, too big for that client)."""
    for offer in offers:
        name, *raw = [part.strip() for part in offer.split(";")]
        if name.lower() != NAME:
            continue
        params = _accept(raw)
        if params is not None:
            return params
    return None


def _accept(raw: list[str]) -> DeflateParams | None:
    seen: set[str] = set()
    server_bits, client_bits, answer_client = 15, 15, False
    for parameter in raw:
        if not parameter:
            return None
        key, _, value = (item.strip() for item in parameter.partition("="))
        key = key.lower()
        value = value.strip('"')
        if key in seen:
            return None
        seen.add(key)
        if key in ("server_no_context_takeover", "client_no_context_takeover") and not value:
            continue  # we answer both whether asked or not
        if key == "server_max_window_bits":
            bits = _window_bits(value)
            if bits is None or bits < 9:
                return None
            server_bits = bits
        elif key == "client_max_window_bits":
            if value:
                bits = _window_bits(value)
                if bits is None:
                    return None
                client_bits = bits
            answer_client = True  # the client may use a smaller window if we say so; we say what we inflate
        else:
            return None
    return DeflateParams(server_bits, client_bits, answer_client)


def _window_bits(value: str) -> int | None:
    if not value.isdigit() or len(value) > 2:
        return None
    bits = int(value)
    return bits if 8 <= bits <= 15 else None


def deflate_payload(payload: bytes, window_bits: int = 15) -> bytes:
    """``payload`` compressed on its own (no context), as a permessage-deflate message
    carries it: the final sync flush's empty block removed."""
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -window_bits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4] if data.endswith(_TAIL) else data


def deflate_frames(frames: bytes, window_bits: int = 15, min_bytes: int = 1024) -> bytes:
    """``frames`` (one or more whole, unmasked, final server frames back to back, as the
    rooms encode them) with each text or binary frame of at least ``min_bytes`` of
    payload compressed (RSV1 set); control frames and small frames unchanged. Returns
    ``frames`` itself when nothing was worth compressing."""
    out: list[bytes] = []
    changed = False
    view = memoryview(frames)
    position, end = 0, len(frames)
    while position < end:
        first, second = frames[position], frames[position + 1]
        length = second & 0x7F
        header_size = 2
        if length == 126:
            (length,) = struct.unpack_from("!H", frames, position + 2)
            header_size = 4
        elif length == 127:
            (length,) = struct.unpack_from("!Q", frames, position + 2)
            header_size = 10
        start = position + header_size
        stop = start + length
        opcode = first & 0x0F
        if opcode in (OP_TEXT, OP_BINARY) and length >= min_bytes and not first & _RSV1:
            out.append(_frame(first | _RSV1, deflate_payload(bytes(view[start:stop]), window_bits)))
            changed = True
        else:
            out.append(bytes(view[position:stop]))
        position = stop
    return b"".join(out) if changed else frames


def _frame(first_byte: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((first_byte, n)) + payload
    if n < 0x10000:
        return struct.pack("!BBH", first_byte, 126, n) + payload
    return struct.pack("!BBQ", first_byte, 127, n) + payload
