"""trio-websocket where the broker is the client (the Python client, `broker client`,
the proxy's upstream legs, the tests), with the one fix it still lacks.

trio-websocket 0.12 answers every ping it receives with a pong, even after this side
has sent its close frame; wsproto then refuses the pong (``LocalProtocolError: Event
Pong ... cannot be sent in state LOCAL_CLOSING``) and the connection's reader task
crashes, so closing a client while the server's ping is on its way fails the caller's
nursery instead of finishing the close handshake (trio-websocket issue #184, fixed
the same way by its open pull request #198). The broker pings its clients (heartbeat,
chat delivery confirmation), so any client closing at the wrong moment met it.

Importing this module answers pings only while the connection is open: a ping that
arrives after our close frame is ignored, as RFC 6455 section 5.5.1 allows (no frame
follows a close but the peer's close). Idempotent; every broker module that opens
trio-websocket client connections imports it (broker/client/broker_client.py,
broker/tools/terminal.py, broker/proxy/upstream.py), and so do the tests.
"""

from __future__ import annotations

from trio_websocket import WebSocketConnection
from wsproto import ConnectionState
from wsproto.events import Ping

_original = WebSocketConnection._handle_ping_event


async def _answer_ping_while_open(self: WebSocketConnection, event: Ping) -> None:
    if self._wsproto.state is ConnectionState.OPEN:
        await _original(self, event)


WebSocketConnection._handle_ping_event = _answer_ping_while_open  # type: ignore[method-assign]
