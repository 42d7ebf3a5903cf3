"""One HTTP request for the CLI and tests, on httpx (which runs on trio through anyio):
bounded in time and response size, one connection per request, no redirects followed,
no proxy settings read from the environment.

Failures keep the shape callers catch: a network or TLS failure raises OSError (its
text says what failed), running out of ``timeout`` raises ``trio.TooSlowError``.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import attrs
import httpx
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
    """Send one request and read the whole response. Raises OSError on network or TLS
    failure, TooSlowError after ``timeout`` seconds, ValueError past ``max_body`` bytes."""
    request_headers = {"User-Agent": "trio-broker", "Connection": "close", **(headers or {})}
    parts = urlsplit(url)  # the target goes out as written (httpx would resolve "..": tests send it on purpose)
    target = ((parts.path or "/") + (f"?{parts.query}" if parts.query else "")).encode("ascii")
    verify: ssl.SSLContext | bool = False  # plain http: no certificates to load (httpx loads them per client)
    if parts.scheme == "https":
        verify = ssl_context if ssl_context is not None else _default_context()
    with trio.fail_after(timeout):
        try:
            async with httpx.AsyncClient(verify=verify, timeout=None, follow_redirects=False, trust_env=False) as client, \
                    client.stream(method, url, headers=request_headers, content=body or None,
                                  extensions={"target": target}) as response:
                received = bytearray()
                async for chunk in response.aiter_raw():
                    received += chunk
                    if len(received) > max_body:
                        raise ValueError("response body too large")
        except httpx.TransportError as exc:
            raise OSError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
    return HttpResponse(response.status_code, {k.lower(): v for k, v in response.headers.items()}, bytes(received))


_DEFAULT_CONTEXT: list[ssl.SSLContext] = []


def _default_context() -> ssl.SSLContext:
    """The system's trust store, loaded once (it takes tens of milliseconds)."""
    if not _DEFAULT_CONTEXT:
        _DEFAULT_CONTEXT.append(ssl.create_default_context())
    return _DEFAULT_CONTEXT[0]
