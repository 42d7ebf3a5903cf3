"""A test client of the SSE transport over any trio stream: h11 reads the response
(chunked or ended by close), broker.protocols.sse parses the events. The test decides
when it reads and whether it answers heartbeats."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import trio

from broker.protocols.sse import Comment, Event, SseParser

OpenStream = Callable[[], Awaitable[trio.abc.Stream]]


class SseTestClient:
    def __init__(self, stream: trio.abc.Stream, open_stream: OpenStream, answer_pings: bool = True) -> None:
        self.stream = stream
        self.open_stream = open_stream  # a new connection to the broker, for POSTs
        self.answer_pings = answer_pings
        self.http = h11.Connection(h11.CLIENT)
        self.parser = SseParser()
        self.status = 0
        self.headers: dict[str, str] = {}
        self.http_version = b""
        self.stream_id = ""
        self.token: str | None = None  # sent with every POST once set
        self.pings = 0
        self.ended = False  # the response body ended
        self._pending: list[Event | Comment] = []

    async def open(self, path: str = "/sse", headers: list[tuple[str, str]] | None = None,
                   http10: bool = False) -> tuple[int, bytes]:
        """Send the GET; (status, body) of a refusal, else (200, b"") once the stream event came."""
        all_headers = [("Host", "test"), ("Accept", "text/event-stream"), *(headers or [])]
        if http10:
            request = f"GET {path} HTTP/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in all_headers) + "\r\n"
            self.http = h11.Connection(h11.CLIENT)
            await self.stream.send_all(request.encode())
            # h11 cannot send HTTP/1.0; tell it a 1.1 request went out, it still reads a 1.0-style body
            self.http.send(h11.Request(method="GET", target=path, headers=all_headers))
        else:
            await self.stream.send_all(self.http.send(h11.Request(method="GET", target=path, headers=all_headers)))
        response = await self._next_http()
        assert isinstance(response, h11.Response), response
        self.status = response.status_code
        self.http_version = response.http_version
        self.headers = {name.decode().lower(): value.decode() for name, value in response.headers}
        if self.status != 200:
            body = b""
            while not isinstance(event := await self._next_http(), (h11.EndOfMessage, h11.ConnectionClosed)):
                body += event.data
            return self.status, body
        first = await self.next_event()
        assert isinstance(first, Event) and first.name == "stream", first
        self.stream_id = json.loads(first.data)["streamId"]
        return 200, b""

    async def _next_http(self):
        while True:
            event = self.http.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.receive_some(65536)
            self.http.receive_data(data)

    async def next_event(self) -> Event | Comment:
        """The next event or comment (answering pings when told to); EndOfChannel at the end."""
        while not self._pending:
            if self.ended:
                raise trio.EndOfChannel
            event = await self._next_http()
            if isinstance(event, h11.Data):
                await self._take(bytes(event.data))
            else:
                self.ended = True
        return self._pending.pop(0)

    async def until_pinged(self, count: int) -> None:
        """Read until ``count`` pings have come in all (events meanwhile are kept for next_event)."""
        while self.pings < count:
            event = await self._next_http()
            if not isinstance(event, h11.Data):
                raise trio.EndOfChannel
            await self._take(bytes(event.data))

    async def _take(self, data: bytes) -> None:
        for parsed in self.parser.feed(data):
            if isinstance(parsed, Comment) and parsed.text.startswith("ping "):
                self.pings += 1
                if self.answer_pings:
                    await self.post_json({"type": "pong", "seq": int(parsed.text.split()[1])})
                continue
            self._pending.append(parsed)

    async def next_json(self) -> dict[str, Any]:
        """The next message (an unnamed event), skipping nothing else silently."""
        event = await self.next_event()
        assert isinstance(event, Event) and event.name == "message", event
        return json.loads(event.data)

    async def expect_close(self) -> tuple[int, str]:
        """Skip messages until ``event: close``; (code, reason), after checking the body ends."""
        while True:
            event = await self.next_event()
            if isinstance(event, Event) and event.name == "close":
                close = json.loads(event.data)
                with trio.fail_after(5):
                    try:
                        extra = await self.next_event()
                    except trio.EndOfChannel:
                        return close["code"], close["reason"]
                    raise AssertionError(f"{extra} after the close event")
                return close["code"], close["reason"]

    async def post(self, body: bytes, token: str | None = None, stream_id: str | None = None,
                   headers: list[tuple[str, str]] | None = None) -> tuple[int, bytes]:
        """One POST on a new connection; (status, body)."""
        token = token if token is not None else self.token
        all_headers = [("Host", "test"), ("Content-Type", "application/json"),
                       ("X-Broker-Stream", stream_id if stream_id is not None else self.stream_id),
                       ("Content-Length", str(len(body))), *(headers or [])]
        if token:
            all_headers.append(("Authorization", f"Bearer {token}"))
        return await http_request(await self.open_stream(), "POST", "/sse", all_headers, body)

    async def post_json(self, message: dict[str, Any], **kwargs: Any) -> tuple[int, bytes]:
        return await self.post(json.dumps(message).encode(), **kwargs)

    async def send_json(self, message: dict[str, Any], **kwargs: Any) -> None:
        status, body = await self.post_json(message, **kwargs)
        assert status == 204, (status, body)


async def http_request(stream: trio.abc.Stream, method: str, target: str, headers: list[tuple[str, str]],
                       body: bytes = b"") -> tuple[int, bytes]:
    """One request on ``stream``, then close it; (status, body)."""
    http = h11.Connection(h11.CLIENT)
    try:
        data = http.send(h11.Request(method=method, target=target, headers=headers))
        if body:
            data += http.send(h11.Data(data=body))
        data += http.send(h11.EndOfMessage())
        await stream.send_all(data)
        status, received = 0, b""
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                received += event.data
            else:
                return status, received
    finally:
        await stream.aclose()


async def open_sse(broker, headers=None, token=None, answer_pings=True, http10=False) -> SseTestClient:
    """An SSE session opened on ``broker`` (200 asserted, within 5 s): its client."""
    async def connect():
        return await trio.open_tcp_stream("127.0.0.1", broker.port)

    client = SseTestClient(await connect(), connect, answer_pings=answer_pings)
    if token is not None:
        headers = [*(headers or []), ("Authorization", f"Bearer {token}")]
        client.token = token
    with trio.fail_after(5):
        status, body = await client.open(headers=headers, http10=http10)
    assert status == 200, (status, body)
    return client
