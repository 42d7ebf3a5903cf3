"""permessage-deflate on the wire: each broadcast compressed once, client messages
inflated within the size bound.

Rooms encode a broadcast once and hand the same ``bytes`` object to every member. A
member that negotiated compression asks :class:`SharedDeflater` for the compressed
form of those bytes: the first member of a broadcast compresses them
(:func:`~broker.protocols.deflate.deflate_frames`), every other member gets the same
compressed bytes from the cache. No compressor state per connection: that is what keeps
compression to about one deflate per broadcast instead of one per subscriber.

Inbound, :class:`BoundedInflate` is wsproto's extension with a bound: a client message
inflates to at most ``max_message_bytes`` (the limit that applies to plain messages), a
deflate bomb is cut off at that size and closed with 1009 before it is held in memory.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

from ..protocols.deflate import DeflateParams, deflate_frames

CACHE_BYTES = 8 << 20  # plain + compressed bytes the cache keeps; past it the oldest entries go (FIFO)


class SharedDeflater:
    """The compressed forms of recently sent frames, keyed by the very ``bytes`` object
    a room hands to each member (its identity, checked on every hit, so a recycled id
    never matches). Bounded to ``max_bytes`` of entries: when full, the oldest are
    dropped; a member meeting a dropped entry compresses again (more CPU, never a
    wrong frame). Sync and shared by every connection of a broker (one trio thread)."""

    __slots__ = ("min_bytes", "max_bytes", "_cache", "_size", "compressions", "hits")

    def __init__(self, min_bytes: int = 1024, max_bytes: int = CACHE_BYTES) -> None:
        self.min_bytes = min_bytes
        self.max_bytes = max_bytes
        self._cache: OrderedDict[tuple[int, int], tuple[bytes, bytes]] = OrderedDict()
        self._size = 0
        self.compressions = 0  # frames buffers compressed (a miss)
        self.hits = 0  # served from the cache

    def deflated(self, frames: bytes, window_bits: int) -> bytes:
        """``frames`` with every text/binary frame of at least ``min_bytes`` compressed."""
        if len(frames) < self.min_bytes:
            return frames  # no frame inside can reach the threshold
        key = (id(frames), window_bits)
        entry = self._cache.get(key)
        if entry is not None and entry[0] is frames:
            self.hits += 1
            return entry[1]
        out = deflate_frames(frames, window_bits, self.min_bytes)
        self.compressions += 1
        if entry is not None:  # a stale entry under a recycled id
            self._forget(key)
        self._cache[key] = (frames, out)
        self._size += len(frames) + (len(out) if out is not frames else 0)
        while self._size > self.max_bytes and self._cache:
            self._forget(next(iter(self._cache)))
        return out

    def _forget(self, key: tuple[int, int]) -> None:
        frames, out = self._cache.pop(key)
        self._size -= len(frames) + (len(out) if out is not frames else 0)


class ConnectionDeflate:
    """One connection's side of the extension: the broker's shared deflater and the
    window this client asked the server to compress with."""

    __slots__ = ("shared", "window_bits")

    def __init__(self, shared: SharedDeflater, params: DeflateParams) -> None:
        self.shared = shared
        self.window_bits = params.server_window_bits

    def outgoing(self, frames: bytes) -> bytes:
        return self.shared.deflated(frames, self.window_bits)


class BoundedInflate(PerMessageDeflate):
    """wsproto's permessage-deflate for the parser, with the inflated size of a message
    bounded by ``max_message_bytes`` (1009 past it) and no context kept between client
    messages (we answered ``client_no_context_takeover``): the inflater exists only
    while a compressed message is being read."""

    def __init__(self, params: DeflateParams, max_message_bytes: int) -> None:
        super().__init__(client_no_context_takeover=True, client_max_window_bits=params.client_window_bits,
                         server_no_context_takeover=True, server_max_window_bits=max(9, params.server_window_bits))
        self._enabled = True  # negotiated by the HTTP front (broker.protocols.deflate), not by wsproto
        self._limit = max_message_bytes
        self._inflated = 0

    def frame_inbound_header(self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits,
                             payload_length: int) -> CloseReason | RsvBits:
        if opcode is not Opcode.CONTINUATION and not opcode.iscontrol():
            self._inflated = 0  # a new message
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(self, proto: FrameDecoder | FrameProtocol, data: bytes) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        assert self._decompressor is not None
        try:
            out = self._decompressor.decompress(bytes(data), self._limit - self._inflated + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > self._limit:
            return CloseReason.MESSAGE_TOO_BIG
        return out

    def frame_inbound_complete(self, proto: FrameDecoder | FrameProtocol, fin: bool) -> bytes | CloseReason | None:
        out = super().frame_inbound_complete(proto, fin)
        if isinstance(out, bytes):
            self._inflated += len(out)
            if self._inflated > self._limit:
                return CloseReason.MESSAGE_TOO_BIG
        return out
