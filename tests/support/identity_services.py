"""Identity services for tests, on loopback: a JWKS server whose keys the test generates
and rotates (with ``cryptography``), and an auth-hook backend. Both are small h11
servers on trio (keep-alive, as httpx pools connections); each counts its requests and
lets a test wait for the n-th one instead of sleeping."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import h11
import jwt
import trio
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

Handler = Callable[[str, str, dict[str, str], bytes], Awaitable[tuple[int, dict[str, str], bytes]]]


class Counter:
    """A count a test can wait on (``await counter.reached(n)``)."""

    def __init__(self) -> None:
        self.value = 0
        self._changed = trio.Event()

    def add(self) -> None:
        self.value += 1
        self._changed.set()
        self._changed = trio.Event()

    async def reached(self, n: int) -> None:
        while self.value < n:
            await self._changed.wait()


async def _serve_connection(stream: trio.SocketStream, handler: Handler) -> None:
    connection = h11.Connection(h11.SERVER)
    try:
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                connection.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                method, target = event.method.decode(), event.target.decode()
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
                body = b""
                while True:
                    part = connection.next_event()
                    if part is h11.NEED_DATA:
                        connection.receive_data(await stream.receive_some(65536))
                    elif isinstance(part, h11.Data):
                        body += part.data
                    elif isinstance(part, h11.EndOfMessage):
                        break
                status, extra, answer = await handler(method, target, headers, body)
                if status == 0:  # the handler says: drop the connection without answering
                    return
                response_headers = [("Content-Length", str(len(answer))), *extra.items()]
                await stream.send_all(connection.send(h11.Response(status_code=status, headers=response_headers)))
                await stream.send_all(connection.send(h11.Data(data=answer)))
                await stream.send_all(connection.send(h11.EndOfMessage()))
                if connection.our_state is h11.MUST_CLOSE:
                    return
                connection.start_next_cycle()
            else:
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
        return
    finally:
        await trio.aclose_forcefully(stream)


@asynccontextmanager
async def http_server(handler: Handler):
    """Serve ``handler`` on 127.0.0.1 (a random port) for the body of the ``with``."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"),
                                        partial(_serve_connection, handler=handler), 0)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


# -- keys and tokens -------------------------------------------------------------


@attrs.define
class SigningKey:
    """A private key of the test's identity provider, its kid and algorithm."""

    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        public = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def token(self, sub: str, ttl: float = 300, now: float | None = None, kid: str | None = "same",
              **claims: Any) -> str:
        issued = now if now is not None else time.time()
        payload = {"sub": sub, "iat": int(issued), "exp": int(issued + ttl), **claims}
        headers = {} if kid is None else {"kid": self.kid if kid == "same" else kid}
        return jwt.encode(payload, self.private, algorithm=self.alg, headers=headers)


def new_key(alg: str = "RS256", kid: str | None = None) -> SigningKey:
    if alg.startswith(("RS", "PS")):
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "ES384":
        private = ec.generate_private_key(ec.SECP384R1())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(alg)
    return SigningKey(kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}", alg, private)


@attrs.define
class JwksServer:
    """Serves ``{"keys": [...]}`` at /jwks with ``cache_control``; ``down`` answers 503."""

    keys: list[SigningKey] = attrs.field(factory=list)
    cache_control: str | None = "max-age=300"
    down: bool = False
    fetches: Counter = attrs.field(factory=Counter)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks"

    async def handle(self, method: str, target: str, headers: dict[str, str], body: bytes):
        self.fetches.add()
        if self.down:
            return 503, {}, b"down for maintenance"
        document = json.dumps({"keys": [key.jwk() for key in self.keys]}).encode()
        extra = {"Content-Type": "application/json"}
        if self.cache_control:
            extra["Cache-Control"] = self.cache_control
        return 200, extra, document


@asynccontextmanager
async def jwks_server(*keys: SigningKey, cache_control: str | None = "max-age=300"):
    server = JwksServer(list(keys), cache_control)
    async with http_server(server.handle) as port:
        server.port = port
        yield server


@attrs.define
class HookBackend:
    """An app backend: ``sessions`` maps a session cookie to its answer (userId and
    the rest); an unknown cookie gets 401. ``status`` overrides the answer (e.g. 500);
    ``stall`` makes it never answer (a timeout); ``gate`` holds each answer until it is set."""

    sessions: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    status: int | None = None
    stall: bool = False
    gate: trio.Event | None = None  # when set: each request waits for it, then is answered
    calls: Counter = attrs.field(factory=Counter)
    requests: list[dict[str, Any]] = attrs.field(factory=list)
    in_flight: int = 0
    most_in_flight: int = 0  # the most requests it held at once
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ws-auth"

    async def handle(self, method: str, target: str, headers: dict[str, str], body: bytes):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self._answer(body)
        finally:
            self.in_flight -= 1

    async def _answer(self, body: bytes):
        self.calls.add()
        request = json.loads(body)
        self.requests.append(request)
        if self.stall:
            await trio.sleep_forever()
        if self.gate is not None:
            await self.gate.wait()
        if self.status is not None:
            return self.status, {}, b"backend error"
        answer = self.sessions.get(request["cookies"].get("session", ""))
        if answer is None:
            return 401, {}, b""
        return 200, {"Content-Type": "application/json"}, json.dumps(answer).encode()


@asynccontextmanager
async def hook_backend(**sessions: dict[str, Any]):
    backend = HookBackend(dict(sessions))
    async with http_server(backend.handle) as port:
        backend.port = port
        yield backend
