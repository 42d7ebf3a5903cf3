"""Publishers for the load scenarios, all on the engine's loop (no extra threads).

* :class:`HttpPublisher`: keep-alive ``POST /api/publish`` to trio-broker;
* :class:`WsPublisher`: a publishing WebSocket to a baseline, socket.io
  (``emit("publish", event, ack)``) or a plain one (frames on ``/publish``).

Each keeps ``pending`` (sent, not answered yet), ``answered``, and ``latencies`` (µs,
from sending a request to reading its answer), and calls ``on_answer(publisher, ok)``
as each answer arrives, so a scenario can send the next request from there.
"""

from __future__ import annotations

import json
import socket
import time
from array import array
from collections import deque
from collections.abc import Callable
from typing import Any

from .engine import SOCKETIO_PATH, Client, Engine, SocketIO, socketio_emit
from .harness import API_KEY, Server

JOB = "bench"
PAD = "x" * 64  # a delivered event is ~200 bytes of JSON


def event_body(k: int, pad: str = PAD) -> dict[str, Any]:
    """Event ``k`` as a publisher gives it to trio-broker or socket.io, carrying its
    send time ``t`` (ns, this machine's clock) for the subscribers' latency."""
    return {"jobId": JOB, "type": "job_status", "data": {"status": "RUNNING", "t": time.time_ns(), "k": k, "pad": pad}}


def event_payload(protocol: str, k: int, pad: str = PAD) -> bytes:
    """Event ``k`` as the target's publisher sends it: JSON for trio-broker and
    socket.io (the server adds seq and timestamp); for a plain baseline the whole event
    with a ``"seq":0`` placeholder that the server numbers."""
    if protocol == "plain":
        return (f'{{"type":"job_status","seq":0,"data":{{"jobId":"{JOB}","status":"RUNNING","t":{time.time_ns()},'
                f'"k":{k},"pad":"{pad}","timestamp":"2026-01-01T00:00:00.000Z"}}}}').encode()
    return json.dumps(event_body(k, pad)).encode()


class _AnswerCounts:
    """What every publisher counts (see the module docstring), and the bookkeeping of
    sending a request and reading its answer."""

    def __init__(self) -> None:
        self.pending = 0
        self.answered = 0
        self.failures = 0
        self.unanswered = 0
        self.reconnects = 0
        self.latencies = array("q")
        self._sent_at: deque[float] = deque()

    def _sent(self) -> None:
        self._sent_at.append(time.perf_counter())
        self.pending += 1

    def _answered(self, ok: bool) -> None:
        """The oldest pending request got its answer (answers come in request order)."""
        self.latencies.append(int((time.perf_counter() - self._sent_at.popleft()) * 1e6))
        self.pending -= 1
        if ok:
            self.answered += 1
        else:
            self.failures += 1


class HttpPublisher(_AnswerCounts):
    """Keep-alive POSTs to /api/publish on the engine's loop (no extra threads).

    Answers come back in request order (HTTP/1.1): each one's latency, from sending the
    request to reading the whole answer, goes to ``latencies`` (µs), and
    ``on_answer(self, ok)`` runs at once, so a scenario can send the next request from
    it. If the server closes the connection, the requests it left unanswered are
    counted in ``unanswered``, never resent (a POST is not idempotent); the next post
    opens a new connection (``reconnects``).
    """

    def __init__(self, engine: Engine, host: str, port: int,
                 on_answer: Callable[[HttpPublisher, bool], None] | None = None) -> None:
        self.engine = engine
        self.address = (host, port)
        self.host = f"{host}:{port}"
        self.on_answer = on_answer
        super().__init__()
        self.buffer = bytearray()
        self.sock: socket.socket | None = None
        self._connect()

    def _connect(self) -> None:
        import selectors

        self.sock = socket.create_connection(self.address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buffer = bytearray()
        self.engine.selector.register(self.sock, selectors.EVENT_READ, self)

    def post(self, body: bytes) -> None:
        head = (f"POST /api/publish HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {API_KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        for _ in range(2):
            if self.sock is None:
                self._connect()
                self.reconnects += 1
            assert self.sock is not None
            try:
                _send_whole(self.sock, head + body)
                break
            except OSError:  # the server had closed the connection: this request never reached it
                self._lost()
        else:
            raise RuntimeError(f"cannot send to {self.host}")
        self._sent()

    def on_readable(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost()
            return
        self.buffer += data
        while self.sock is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0]) if b"content-length:" in head else 0
            if len(self.buffer) < end + 4 + length:
                return
            ok = self.buffer.startswith(b"HTTP/1.1 200")
            del self.buffer[: end + 4 + length]
            self._answered(ok)
            if b"\r\nconnection: close" in head:
                self._lost()
            if self.on_answer is not None:
                self.on_answer(self, ok)

    def _lost(self) -> None:
        """The server closed the connection: what it did not answer is not resent."""
        self.unanswered += self.pending
        self.pending = 0
        self._sent_at.clear()
        self.close()

    def close(self) -> None:
        if self.sock is None:
            return
        try:
            self.engine.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
        self.sock = None


def _send_whole(sock: socket.socket, data: bytes) -> None:
    """Send all of ``data`` on a non-blocking socket: one ``send`` when the kernel takes
    it (the usual case), waiting in blocking mode only for what it did not."""
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        sock.setblocking(True)
        try:
            sock.sendall(data[sent:])
        finally:
            sock.setblocking(False)


class WsPublisher(_AnswerCounts):
    """A publishing WebSocket to a baseline. With ``acks`` each event is answered (a
    socket.io ack, or an ``ack`` frame on ``/publish?ack=1``) and counted like an HTTP
    answer; without, events stream with nothing back (``pending`` stays 0)."""

    def __init__(self, engine: Engine, server: Server, on_answer: Callable[[WsPublisher, bool], None] | None = None,
                 acks: bool = True) -> None:
        self.socketio = server.protocol == "socketio"
        self.acks = acks
        self.on_answer = on_answer
        super().__init__()
        self._next_ack = 0
        self._connected = False
        if self.socketio:
            path, on_message = SOCKETIO_PATH, SocketIO(on_connect=self._on_connect, on_ack=self._on_ack)
        else:
            path, on_message = ("/publish?ack=1" if acks else "/publish"), self._on_frame
        self.client = engine.connect(server.host, server.port, path, on_message)
        engine.run_until(lambda: self.ready or self.client.state == "closed", time.perf_counter() + 10)
        if not self.ready:
            raise RuntimeError(f"publisher could not connect to {server.target}")

    @property
    def ready(self) -> bool:
        return self._connected if self.socketio else self.client.state == "open"

    def post(self, payload: bytes) -> None:
        if self.socketio:
            ack_id = None
            if self.acks:
                self._next_ack += 1
                ack_id = self._next_ack
            socketio_emit(self.client, "publish", payload, ack_id)
        else:
            self.client.send_text(payload)
        if self.acks:
            self._sent()

    def _on_connect(self, client: Client) -> None:
        self._connected = True

    def _on_frame(self, client: Client, opcode: int, payload: bytes) -> None:
        if payload == b"ack":
            self._answer()

    def _on_ack(self, client: Client, ack_id: int, payload: bytes) -> None:
        self._answer()  # acks come back in emit order: one connection, one handler

    def _answer(self) -> None:
        self._answered(True)
        if self.on_answer is not None:
            self.on_answer(self, True)

    def close(self) -> None:
        self.unanswered += self.pending
        self.client.close()
