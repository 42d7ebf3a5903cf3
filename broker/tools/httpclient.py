"""A minimal HTTP/1.1 client on h11 and trio, for the CLI and tests (one request per
connection; bounded in time and response size)."""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import attrs
import h11
import trio


@attrs.frozen
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


async def http_request(method: str, url: str, *, headers: dict[str, str] | None = None, body: bytes = b"",
                       timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None,
                       max_body: int = 16 << 20) -> HttpResponse:
    """Send one request and read the whole response. Raises OSError / trio errors on
    network failure and TooSlowError after ``timeout`` seconds."""
    parts = urlsplit(url)
    secure = parts.scheme in ("https", "wss")
    host = parts.hostname or "localhost"
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request_headers = [("Host", parts.netloc), ("User-Agent", "trio-broker"), ("Connection", "close")]
    request_headers += list((headers or {}).items())
    if body or method in ("POST", "PUT"):
        request_headers.append(("Content-Length", str(len(body))))
    with trio.fail_after(timeout):
        if secure:
            stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(
                host, port, ssl_context=ssl_context or ssl.create_default_context()
            )
        else:
            stream = await trio.open_tcp_stream(host, port)
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            data = conn.send(h11.Request(method=method, target=target, headers=request_headers))
            if body:
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
            await stream.send_all(data)
            response: h11.Response | None = None
            received = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))  # h11 takes bytes
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    received += event.data
                    if len(received) > max_body:
                        raise ValueError("response body too large")
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
    assert response is not None
    return HttpResponse(
        response.status_code,
        {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers},
        bytes(received),
    )
