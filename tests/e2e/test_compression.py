"""permessage-deflate (RFC 7692, issue 19 section 2): negotiation, each broadcast
compressed once, real clients with and without the extension, and the inflate bound.

Pure tests first (negotiation, framing, the shared cache), then the broker over
loopback with the `websockets` library's client and a raw wsproto client that sees
the frames as they are on the wire."""

import json
import socket
import struct
import zlib

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage
from wsproto.extensions import PerMessageDeflate

from broker import serve
from broker.protocols.deflate import DeflateParams, deflate_frames, deflate_payload, negotiate
from broker.protocols.frames import ping_frame, text_frame
from broker.transport.deflate import SharedDeflater
from tests.support.helpers import make_config

BIG_EVENT = {"status": "RUNNING", "log": [{"line": i, "text": f"stage {i % 7} finished step {i}"} for i in range(400)]}


def inflate(payload: bytes, window_bits: int = 15) -> bytes:
    return zlib.decompressobj(-window_bits).decompress(payload + b"\x00\x00\xff\xff")


# -- negotiation (pure) ----------------------------------------------------------------


def test_a_plain_offer_is_answered_without_context_takeover_either_way():
    params = negotiate(["permessage-deflate"])
    assert params == DeflateParams()
    assert params.response() == "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def test_the_browsers_offer_gets_the_client_window_named():
    params = negotiate(["permessage-deflate; client_max_window_bits"])
    assert params.response().endswith("client_max_window_bits=15")


def test_a_smaller_server_window_is_honoured_and_8_is_declined():
    assert negotiate(["permessage-deflate; server_max_window_bits=10"]).server_window_bits == 10
    assert negotiate(["permessage-deflate; server_max_window_bits=8"]) is None  # zlib would use 9
    fallback = negotiate(["permessage-deflate; server_max_window_bits=8", "permessage-deflate"])
    assert fallback == DeflateParams()


@pytest.mark.parametrize("offer", [
    "permessage-deflate; unknown_param",
    "permessage-deflate; server_max_window_bits=16",
    "permessage-deflate; server_max_window_bits",  # a value is required from a client
    "permessage-deflate; client_max_window_bits=abc",
    "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
    "x-webkit-deflate-frame",
])
def test_offers_we_cannot_honour_are_declined(offer):
    assert negotiate([offer]) is None


def test_large_frames_are_compressed_small_and_control_frames_are_not():
    big = json.dumps(BIG_EVENT).encode()
    frames = text_frame(b'{"type":"pong"}') + text_frame(big) + ping_frame(b"x")
    out = deflate_frames(frames, min_bytes=1024)
    first, second_start = out[:17], 17
    assert first == text_frame(b'{"type":"pong"}')
    assert out[second_start] == 0x80 | 0x40 | 0x1  # FIN, RSV1, text
    (length,) = struct.unpack_from("!H", out, second_start + 2)
    payload = out[second_start + 4: second_start + 4 + length]
    assert inflate(payload) == big and length * 3 < len(big)
    assert out.endswith(ping_frame(b"x"))
    assert deflate_frames(text_frame(b"small"), min_bytes=1024) == text_frame(b"small")


def test_a_payload_inflates_with_the_window_the_client_asked_for():
    data = json.dumps(BIG_EVENT).encode()
    assert inflate(deflate_payload(data, 10), 10) == data


def test_the_shared_deflater_compresses_each_broadcast_once():
    deflater = SharedDeflater(min_bytes=1024)
    broadcast = text_frame(json.dumps(BIG_EVENT).encode())
    first = deflater.deflated(broadcast, 15)
    assert all(deflater.deflated(broadcast, 15) is first for _ in range(999))  # the same bytes to every member
    assert (deflater.compressions, deflater.hits) == (1, 999)
    copy = bytes(bytearray(broadcast))  # equal bytes, another broadcast: its own entry
    assert deflater.deflated(copy, 15) == first and deflater.compressions == 2


def test_the_shared_deflater_stays_within_its_bound():
    deflater = SharedDeflater(min_bytes=1024, max_bytes=64 << 10)
    for i in range(100):
        deflater.deflated(text_frame(json.dumps({**BIG_EVENT, "n": i}).encode()), 15)
    assert deflater._size <= 64 << 10


# -- over loopback -------------------------------------------------------------------------


class ByteCountingClient:
    """A wsproto client on a plain socket, in a worker thread: it sees each frame's bytes."""

    def __init__(self, port: int, extensions: list | None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.wire_bytes = 0
        self.sock.sendall(self.ws.send(Request(host="127.0.0.1", target="/ws?token=demo-token",
                                               extensions=extensions or [])))
        self.accepted = self._next(AcceptConnection)

    def _next(self, kind):
        while True:
            for event in self.ws.events():
                if isinstance(event, kind):
                    return event
                if isinstance(event, CloseConnection):
                    return event
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed without a close frame")
            self.wire_bytes += len(data)
            self.ws.receive_data(data)

    def message(self) -> dict:
        event = self._next(TextMessage)
        assert isinstance(event, TextMessage), event
        return json.loads(event.data)

    def send(self, message: dict) -> None:
        self.sock.sendall(self.ws.send(TextMessage(data=json.dumps(message))))

    def close(self) -> None:
        self.sock.close()


async def in_thread(function, *args):
    return await trio.to_thread.run_sync(function, *args)


async def watch_big_event(broker, extensions) -> tuple[ByteCountingClient, dict]:
    client = await in_thread(ByteCountingClient, broker.ports[0], extensions)
    assert (await in_thread(client.message))["type"] == "connection_established"
    await in_thread(client.send, {"type": "join_job", "jobId": "job-big"})
    assert (await in_thread(client.message))["type"] == "joined"
    return client, {}


async def test_a_compressing_client_gets_the_event_in_a_third_of_the_bytes_and_a_plain_one_as_ever(nursery, tmp_path):
    broker = await nursery.start(serve, make_config(tmp_path))
    deflating, _ = await watch_big_event(broker, [PerMessageDeflate()])
    plain, _ = await watch_big_event(broker, None)
    try:
        assert [type(e) for e in deflating.accepted.extensions] == [PerMessageDeflate]
        assert plain.accepted.extensions == []
        before = (deflating.wire_bytes, plain.wire_bytes)
        with trio.fail_after(10):
            await broker.publish("job-big", "job_status", BIG_EVENT)
            got = [await in_thread(client.message) for client in (deflating, plain)]
        assert got[0] == got[1] and got[0]["data"]["log"] == BIG_EVENT["log"]
        on_wire = (deflating.wire_bytes - before[0], plain.wire_bytes - before[1])
        assert on_wire[0] * 3 < on_wire[1], on_wire
    finally:
        deflating.close()
        plain.close()


async def test_a_broadcast_is_compressed_once_for_all_its_members(nursery, tmp_path):
    broker = await nursery.start(serve, make_config(tmp_path))
    deflater = broker.broker.deflater
    clients = [(await watch_big_event(broker, [PerMessageDeflate()]))[0] for _ in range(5)]
    try:
        compressions = deflater.compressions
        with trio.fail_after(10):
            await broker.publish("job-big", "job_status", BIG_EVENT)
            for client in clients:
                assert (await in_thread(client.message))["seq"] == 1
        assert deflater.compressions == compressions + 1
    finally:
        for client in clients:
            client.close()


async def test_compression_off_by_config_negotiates_nothing(nursery, tmp_path):
    broker = await nursery.start(serve, make_config(tmp_path, websocket={"compression": False}))
    client, _ = await watch_big_event(broker, [PerMessageDeflate()])
    try:
        assert client.accepted.extensions == []
    finally:
        client.close()


async def test_compressed_client_messages_are_understood(nursery, tmp_path):
    """wsproto's client compresses what it sends once the extension is on: the joins
    above already went in compressed; here a large compressed message too."""
    broker = await nursery.start(serve, make_config(tmp_path))
    client, _ = await watch_big_event(broker, [PerMessageDeflate()])
    try:
        await in_thread(client.send, {"type": "ping", "padding": "x" * 20000})
        assert (await in_thread(client.message))["type"] == "pong"
    finally:
        client.close()


def masked_frame(first_byte: int, payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    if n < 126:
        header = bytes((first_byte, 0x80 | n))
    elif n < 0x10000:
        header = struct.pack("!BBH", first_byte, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first_byte, 0x80 | 127, n)
    return header + mask + masked


async def test_a_deflate_bomb_is_closed_with_1009_before_it_is_inflated(nursery, tmp_path):
    broker = await nursery.start(serve, make_config(tmp_path))  # max_frame_bytes 64 KiB
    client = await in_thread(ByteCountingClient, broker.ports[0], [PerMessageDeflate()])
    try:
        assert (await in_thread(client.message))["type"] == "connection_established"
        bomb = deflate_payload(b"[" + b" " * (40 << 20) + b"]")  # 40 MiB of JSON in one frame
        assert len(bomb) < 64 << 10  # within the frame limit: only the inflate bound can stop it
        await in_thread(client.sock.sendall, masked_frame(0x80 | 0x40 | 0x1, bomb))
        closed = await in_thread(client._next, CloseConnection)
        assert isinstance(closed, CloseConnection) and closed.code == 1009
    finally:
        client.close()


async def test_the_websockets_library_with_and_without_compression(nursery, tmp_path):
    from websockets.sync.client import connect

    broker = await nursery.start(serve, make_config(tmp_path))
    url = f"ws://127.0.0.1:{broker.ports[0]}/ws?token=demo-token"

    def watch(compression):
        with connect(url, compression=compression, max_size=None) as ws:
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
            assert json.loads(ws.recv(timeout=10))["type"] == "connection_established"
            ws.send(json.dumps({"type": "join_job", "jobId": "job-lib", "lastSeq": 0}))
            while (message := json.loads(ws.recv(timeout=10))).get("type") != "job_status":
                pass
            return extensions, message

    await broker.publish("job-lib", "job_status", BIG_EVENT)
    with trio.fail_after(20):
        (with_ext, compressed), (without_ext, plain) = [await in_thread(watch, c) for c in ("deflate", None)]
    assert with_ext is not None and "permessage-deflate" in with_ext and without_ext is None
    assert compressed == plain and compressed["data"]["log"] == BIG_EVENT["log"]

