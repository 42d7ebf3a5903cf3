"""A ServerWebSocket under test and its peer, over an in-memory stream or a loopback
socket pair (``connected``), and a stream that counts what the server reads."""

from __future__ import annotations

from contextlib import asynccontextmanager

import trio
import trio.testing
import wsproto
from wsproto.events import AcceptConnection, Request

from broker.transport.websocket import ServerWebSocket
from broker.transport.wire import WireStream


class Peer:
    """The client side: a wsproto client that reads the server's frames."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.events: list = []
        # the front end has read the request already: only its key matters here
        request = self.ws.send(Request(host="test", target="/ws", subprotocols=["chat.v2", "chat.v1"]))
        self.key = next(line.split(b": ", 1)[1] for line in request.split(b"\r\n")
                        if line.lower().startswith(b"sec-websocket-key"))

    async def next_event(self):
        with trio.fail_after(5):
            while not self.events:
                data = await self.stream.receive_some(65536)
                self.ws.receive_data(data or None)
                self.events += list(self.ws.events())
            return self.events.pop(0)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_event(self, event) -> None:
        await self.stream.send_all(self.ws.send(event))


@asynccontextmanager
async def connected(**options):
    """A ServerWebSocket that accepted a Peer over an in-memory stream."""
    server_end, client_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        ws = ServerWebSocket(WireStream(server_end, spawn=nursery.start_soon), **options)
        peer = Peer(client_end)
        ws.accept(peer.key, "chat.v1")
        accepted = await peer.next_event()
        assert isinstance(accepted, AcceptConnection) and accepted.subprotocol == "chat.v1"
        yield ws, peer
        nursery.cancel_scope.cancel()


class CountingStream(trio.abc.Stream):
    """The server's end, counting what the server reads from it."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.received = 0

    async def send_all(self, data) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        data = await self.stream.receive_some(max_bytes)
        self.received += len(data)
        return data

    async def aclose(self) -> None:
        await self.stream.aclose()
