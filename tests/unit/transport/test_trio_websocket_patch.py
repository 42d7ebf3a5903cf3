"""The trio-websocket client fix in broker/transport/trio_websocket_patch.py: a ping that arrives after the
client sent its close frame no longer crashes the client (trio-websocket #184)."""

from __future__ import annotations

import functools

import pytest
import trio
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request

import broker.transport.trio_websocket_patch  # noqa: F401  (applies the fix)

LATE_PING = b"\x89\x04late"  # an unmasked server ping frame, payload "late"


async def _server_that_pings_after_the_close(stream: trio.SocketStream) -> None:
    """Accept, and when the client's close arrives, send a ping (one the server had
    already queued) before the close response, as a broker's heartbeat can."""
    ws = WSConnection(ConnectionType.SERVER)
    try:
        while data := await stream.receive_some(65536):
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, Request):
                    await stream.send_all(ws.send(AcceptConnection()))
                elif isinstance(event, CloseConnection):
                    await stream.send_all(LATE_PING)
                    await stream.send_all(ws.send(event.response()))
    except trio.BrokenResourceError:
        pass


@pytest.mark.slow
async def test_a_ping_arriving_after_the_clients_close_is_ignored_and_the_close_completes():
    # Without the fix the client's reader crashes on the pong; depending on timing the
    # LocalProtocolError escapes the `async with`, or a stray Cancelled does and the
    # code after it never runs: both leave `closed_cleanly` False.
    closed_cleanly = False
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, _server_that_pings_after_the_close, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
                pass
            assert ws.closed is not None and ws.closed.code == 1000  # the handshake finished
            closed_cleanly = True
            nursery.cancel_scope.cancel()
    assert closed_cleanly
