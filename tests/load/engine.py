"""The load generator's engine: many WebSocket clients on one epoll loop, one thread.

A load generator must not be the bottleneck it measures, so this is not built on
trio-websocket (a task and a parser per connection): it is a single ``selectors``
loop over non-blocking sockets with a minimal RFC 6455 client (client frames are
masked with a zero key, which is valid and makes masking free). Each connection
hands whole messages to a callback; pings are answered; the close code is kept.

Every wait is bounded (``run_until`` takes a deadline) so a run always ends.

:class:`SocketIO` speaks the Socket.IO v5 / Engine.IO v4 client protocol over the
WebSocket transport alone (text frames only), for the Node socket.io baseline.
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

_HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
)
_MASK = b"\x00\x00\x00\x00"

OnMessage = Callable[["Client", int, bytes], None]


def client_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + _MASK + payload  # XOR with a zero mask leaves the payload as is


class Client:
    """One WebSocket client connection driven by an :class:`Engine`."""

    __slots__ = ("engine", "sock", "state", "inbuf", "outbuf", "on_message", "close_code", "opened_at",
                 "connected_at", "tag", "paused", "messages", "bytes_in", "deflate", "_fragments", "_fragment_op",
                 "_compressed")

    def __init__(self, engine: Engine, sock: socket.socket, on_message: OnMessage | None, tag: Any) -> None:
        self.engine = engine
        self.sock = sock
        self.state = "connecting"  # connecting -> handshake -> open -> closed
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.on_message = on_message
        self.close_code: int | None = None
        self.opened_at = time.perf_counter()
        self.connected_at: float | None = None
        self.tag = tag
        self.paused = False
        self.messages = 0
        self.bytes_in = 0  # bytes read from the socket once open (what the server put on the wire)
        self.deflate = False  # offered permessage-deflate (the server answers without context takeover)
        self._fragments: list[bytes] = []
        self._fragment_op = 0
        self._compressed = False

    def send_text(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        self.send_raw(client_frame(0x1, data))

    def send_raw(self, data: bytes) -> None:
        if self.state == "closed":
            return
        if not self.outbuf and self.state == "open":
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.engine._close(self, 1006)
                return
            data = data[sent:]
        if data:
            self.outbuf += data
            self.engine._want_write(self)

    def close(self, code: int = 1000) -> None:
        if self.state == "open":
            self.send_raw(client_frame(0x8, struct.pack("!H", code)))
        self.engine._close(self, code)

    def pause(self) -> None:
        """Stop reading (a slow consumer): the kernel buffers fill, the server sees it."""
        self.paused = True
        self.engine._update(self)


class Engine:
    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.clients: set[Client] = set()
        self.open = 0
        self.closed = 0
        self.failed = 0
        self._timers: list[tuple[float, Callable[[], None]]] = []

    # -- connections -------------------------------------------------------

    def connect(self, host: str, port: int, path: str, on_message: OnMessage | None = None,
                headers: dict[str, str] | None = None, tag: Any = None, receive_buffer: int | None = None,
                deflate: bool = False) -> Client:
        """``receive_buffer`` sets SO_RCVBUF before connecting: a small one makes a client
        that stops reading look like a stalled mobile client instead of a loopback one
        whose kernel soaks up megabytes."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = Client(self, sock, on_message, tag)
        client.deflate = deflate
        if deflate:
            headers = {**(headers or {}), "Sec-WebSocket-Extensions": "permessage-deflate"}
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        client.outbuf += _HANDSHAKE.format(path=path, host=f"{host}:{port}", extra=extra).encode()
        try:
            sock.connect((host, port))
        except BlockingIOError:
            pass
        except OSError:
            self.failed += 1
            sock.close()
            client.state = "closed"
            return client
        self.clients.add(client)
        self.selector.register(sock, selectors.EVENT_WRITE, client)
        return client

    def _want_write(self, client: Client) -> None:
        self._update(client)

    def _update(self, client: Client) -> None:
        if client.state == "closed":
            return
        events = 0 if client.paused else selectors.EVENT_READ
        if client.outbuf or client.state == "connecting":
            events |= selectors.EVENT_WRITE
        try:
            if events:
                self.selector.modify(client.sock, events, client)
            else:
                self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            if events:
                self.selector.register(client.sock, events, client)

    def _close(self, client: Client, code: int | None) -> None:
        if client.state == "closed":
            return
        if client.state == "open":
            self.open -= 1
        else:
            self.failed += 1
        client.state = "closed"
        client.close_code = client.close_code if client.close_code is not None else code
        self.closed += 1
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()
        self.clients.discard(client)

    # -- the loop ------------------------------------------------------------

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        self._timers.append((when, callback))
        self._timers.sort(key=lambda item: item[0])

    def run_until(self, done: Callable[[], bool], deadline: float) -> bool:
        """Serve I/O until ``done()`` or ``deadline`` (perf_counter); True if done."""
        while not done():
            now = time.perf_counter()
            while self._timers and self._timers[0][0] <= now:
                _, callback = self._timers.pop(0)
                callback()
            if now >= deadline:
                return False
            timeout = deadline - now
            if self._timers:
                timeout = min(timeout, max(0.0, self._timers[0][0] - now))
            for key, mask in self.selector.select(min(timeout, 0.05)):
                client = key.data
                if not isinstance(client, Client):  # another socket on the loop (a publisher)
                    client.on_readable()
                    continue
                if mask & selectors.EVENT_WRITE:
                    self._on_writable(client)
                if mask & selectors.EVENT_READ and client.state != "closed":
                    self._on_readable(client)
        return True

    def _on_writable(self, client: Client) -> None:
        if client.state == "connecting":
            error = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self._close(client, 1006)
                return
            client.state = "handshake"
        try:
            sent = client.sock.send(client.outbuf)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(client, 1006)
            return
        del client.outbuf[:sent]
        self._update(client)

    def _on_readable(self, client: Client) -> None:
        try:
            data = client.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                self._close(client, 1006)
            return
        if not data:
            self._close(client, 1006)
            return
        client.inbuf += data
        if client.state == "open":
            client.bytes_in += len(data)
        if client.state == "handshake":
            end = client.inbuf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = client.inbuf[9:12]
            if status != b"101":
                client.close_code = int(status) if status.isdigit() else 0  # the HTTP status, for reports
                self._close(client, client.close_code)
                return
            client.bytes_in += len(client.inbuf) - end - 4
            del client.inbuf[: end + 4]
            client.state = "open"
            client.connected_at = time.perf_counter()
            self.open += 1
            self._update(client)
        self._parse(client)

    def _parse(self, client: Client) -> None:
        buf = client.inbuf
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            offset = pos + 2
            if length == 126:
                if size - offset < 2:
                    break
                length = (buf[offset] << 8) | buf[offset + 1]
                offset += 2
            elif length == 127:
                if size - offset < 8:
                    break
                (length,) = struct.unpack_from("!Q", buf, offset)
                offset += 8
            if size - offset < length:
                break
            payload = bytes(buf[offset: offset + length])
            pos = offset + length
            opcode = b0 & 0x0F
            if opcode == 0x9:  # ping
                client.send_raw(client_frame(0xA, payload))
            elif opcode == 0x8:  # close
                client.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                if client.state == "open":
                    client.send_raw(client_frame(0x8, payload[:2]))
                del buf[:pos]
                self._close(client, client.close_code)
                return
            elif opcode in (0x1, 0x2, 0x0):
                if opcode and b0 & 0x40:  # RSV1 on a message's first frame: compressed
                    client._compressed = True
                if not b0 & 0x80:  # a fragment: keep it until the final one
                    client._fragments.append(payload)
                    client._fragment_op = client._fragment_op or opcode
                    continue
                if client._fragments:
                    payload = b"".join(client._fragments) + payload
                    opcode = client._fragment_op
                    client._fragments, client._fragment_op = [], 0
                if client._compressed:  # no context is kept between the server's messages
                    payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
                    client._compressed = False
                client.messages += 1
                if client.on_message is not None:
                    client.on_message(client, opcode, payload)
        if pos:
            del buf[:pos]

    def close_all(self) -> None:
        for client in list(self.clients):
            client.close()
        self.selector.close()


# -- Socket.IO v5 over Engine.IO v4, WebSocket transport only -----------------

SOCKETIO_PATH = "/socket.io/?EIO=4&transport=websocket"

OnSocketIOConnect = Callable[[Client], None]
OnSocketIOEvent = Callable[[Client, bytes], None]
OnSocketIOAck = Callable[[Client, int, bytes], None]


class SocketIO:
    """A Socket.IO client's side of the wire, as an ``on_message`` callback.

    Engine.IO packets are text frames whose first character is the type: ``0{...}``
    open (answered with ``40``: connect to the main namespace), ``2`` ping (answered
    with ``3``), ``1`` close, ``4...`` a Socket.IO packet: ``40{...}`` connected,
    ``42[...]`` an event, ``43<id>[...]`` the ack of an event we emitted with that id,
    ``44{...}`` a refused connect, ``41`` disconnected. ``on_event`` gets the JSON array
    (``["name",data,...]``) as bytes, unparsed: the harness only scans it.
    """

    __slots__ = ("on_connect", "on_event", "on_ack")

    def __init__(self, on_connect: OnSocketIOConnect | None = None, on_event: OnSocketIOEvent | None = None,
                 on_ack: OnSocketIOAck | None = None) -> None:
        self.on_connect = on_connect
        self.on_event = on_event
        self.on_ack = on_ack

    def __call__(self, client: Client, opcode: int, payload: bytes) -> None:
        kind = payload[:1]
        if kind == b"4":
            packet = payload[1:2]
            if packet == b"2":
                if self.on_event is not None:
                    self.on_event(client, payload[2:])
            elif packet == b"3":
                end = 2
                while end < len(payload) and payload[end:end + 1].isdigit():
                    end += 1
                if self.on_ack is not None and end > 2:
                    self.on_ack(client, int(payload[2:end]), payload[end:])
            elif packet == b"0":
                if self.on_connect is not None:
                    self.on_connect(client)
            elif packet in (b"1", b"4"):  # disconnected, or the connect was refused
                client.close(1000)
        elif kind == b"2":
            client.send_text(b"3")
        elif kind == b"0":
            client.send_text(b"40")
        elif kind == b"1":
            client.close(1000)


def socketio_emit(client: Client, event: str, data_json: bytes, ack_id: int | None = None) -> None:
    """Emit ``event`` with one argument, ``data_json`` (already JSON); with ``ack_id``
    the server answers with ``43<ack_id>[...]``."""
    ack = b"" if ack_id is None else str(ack_id).encode()
    client.send_text(b"42" + ack + b'["' + event.encode() + b'",' + data_json + b"]")
