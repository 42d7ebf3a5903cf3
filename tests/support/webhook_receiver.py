"""A webhook receiver for tests: a small HTTP/1.1 server on trio and h11 on loopback.

Each request is recorded (headers, body) and answered by ``respond`` (async, so a
test can make it fail, wait or hang): ``respond(request) -> (status, headers)``.
Tests wait for what they expect with :meth:`Receiver.wait_for` under ``fail_after``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import trio


@attrs.define
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


async def accept_all(request: Received) -> tuple[int, list[tuple[str, str]]]:
    return 204, []


Respond = Callable[[Received], Awaitable[tuple[int, list[tuple[str, str]]]]]


class Receiver:
    def __init__(self, respond: Respond = accept_all) -> None:
        self.respond = respond
        self.requests: list[Received] = []  # every attempt, in arrival order
        self.port = 0
        self._changed = trio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def delivered(self, types: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """Each event once (by webhook-id), in first-arrival order."""
        seen: dict[str, dict[str, Any]] = {}
        for request in self.requests:
            event = request.event
            if types is None or event["type"] in types:
                seen.setdefault(request.webhook_id, event)
        return list(seen.values())

    async def wait_for(self, predicate: Callable[[Receiver], bool]) -> None:
        while not predicate(self):
            await self._changed.wait()

    async def _handle(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = None, bytearray()
                while True:
                    event = connection.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        connection.receive_data(data)
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                assert request is not None
                received = Received({k.decode().lower(): v.decode() for k, v in request.headers}, bytes(body))
                self.requests.append(received)
                self._changed.set()
                self._changed = trio.Event()
                status, headers = await self.respond(received)
                await stream.send_all(connection.send(h11.Response(
                    status_code=status, headers=[("content-length", "0"), *headers])))
                await stream.send_all(connection.send(h11.EndOfMessage()))
                if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                    return
                connection.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            await stream.aclose()


@asynccontextmanager
async def webhook_receiver(respond: Respond = accept_all, port: int = 0):
    """A running :class:`Receiver` on loopback (``port``, or a free one); stopped after the block."""
    receiver = Receiver(respond)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, receiver._handle, port, host="127.0.0.1"))
        receiver.port = listeners[0].socket.getsockname()[1]
        yield receiver
        nursery.cancel_scope.cancel()
