"""``broker client URL``: an interactive WebSocket client for the terminal (like wscat).

Lines typed (or piped) on standard input are sent as text messages; every message
received is printed with a timestamp (``<`` in, binary as a length and hex preview);
the close code and reason are shown with their meaning. End of input closes with 1000
(after ``--wait`` seconds for the last replies).
"""

from __future__ import annotations

import os
import ssl
import sys
import time
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

import trio
import trio_websocket

from ..observability.redact import redact
from ..transport import trio_websocket_patch  # noqa: F401  (answers pings only while open: trio-websocket #184)
from .doctor import close_meaning


def _stamp() -> str:
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"


def _show(message: str | bytes) -> str:
    if isinstance(message, bytes):
        return f"<binary {len(message)} bytes> {message[:32].hex()}{'...' if len(message) > 32 else ''}"
    return message


async def run_client(url: str, token: str | None = None, *, ca_file: str | None = None, wait: float = 0.5,
                     stdin_fd: int | None = None, out: TextIO | None = None) -> int:
    """Returns the exit status: 0 after a normal close, 1 otherwise. After the end of
    input it keeps printing replies for ``wait`` seconds, then closes with 1000."""
    out = out or sys.stdout

    def say(text: str) -> None:
        print(f"{_stamp()} {text}", file=out, flush=True)

    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        url = urlunsplit(parts._replace(scheme="ws" if parts.scheme == "http" else "wss"))
    headers = [(b"Authorization", f"Bearer {token}".encode())] if token else []
    context = None
    if url.startswith("wss://"):
        context = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    fd = os.dup(sys.stdin.fileno() if stdin_fd is None else stdin_fd)
    stdin = trio.lowlevel.FdStream(fd)  # owns fd from here on
    try:
        async with trio_websocket.open_websocket_url(url, extra_headers=headers, ssl_context=context) as ws:
            say(f"connected to {redact(url)} (type a message and press enter; end input to close)")
            server_closed: list[trio_websocket.CloseReason | None] = []
            closing = False
            async with trio.open_nursery() as tasks:

                async def print_incoming() -> None:
                    try:
                        while True:
                            say(f"< {_show(await ws.get_message())}")
                    except trio_websocket.ConnectionClosed as exc:
                        if not closing:  # the server closed, not our aclose below
                            server_closed.append(exc.reason)
                        tasks.cancel_scope.cancel()

                tasks.start_soon(print_incoming)
                await _send_lines(ws, stdin)
                await trio.sleep(wait)  # replies to the last lines are still on their way
                closing = True
                await ws.aclose(1000, "end of input")
                tasks.cancel_scope.cancel()
            if not server_closed:  # we closed: trio-websocket records no reason for our side
                say(f"closed 1000 ({close_meaning(1000)}) end of input")
                return 0
            reason = server_closed[0]
            code = reason.code if reason else None
            say(f"closed {code} ({close_meaning(code)}) {reason.reason if reason and reason.reason else ''}".rstrip())
            return 0 if code == 1000 else 1
    except trio_websocket.ConnectionRejected as exc:
        body = (exc.body or b"").decode("utf-8", "replace").strip()
        say(f"refused: HTTP {exc.status_code} {body}".rstrip() + f"  (try: broker doctor {redact(url)})")
        return 1
    except (trio_websocket.HandshakeError, OSError) as exc:
        say(f"cannot connect: {exc.__cause__ or exc or type(exc).__name__}  (try: broker doctor {redact(url)})")
        return 1
    finally:
        await trio.aclose_forcefully(stdin)


async def _send_lines(ws: trio_websocket.WebSocketConnection, stdin: trio.lowlevel.FdStream) -> None:
    buffered = b""
    while True:
        chunk = await stdin.receive_some(65536)
        if not chunk:
            break
        buffered += chunk
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace").rstrip("\r")
            if text:
                await ws.send_message(text)
    if buffered.strip():
        await ws.send_message(buffered.decode("utf-8", "replace").strip())
