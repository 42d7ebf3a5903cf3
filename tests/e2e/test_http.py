"""The one-port HTTP front, end to end over loopback."""

import json
import re
from urllib.parse import urlsplit

import h11
import pytest
import trio
import wsproto.frame_protocol
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import Reply
from broker.protocols import JobEvent
from broker.tools.httpclient import http_request
from broker.transport.http1 import Http1Connection
from broker.web.api import PublishAnswer
from broker.web.pipeline import PublishPipeline
from broker.web.server import _path
from tests.support.clients import publish_head
from tests.support.helpers import API_KEY, DEMO_TOKEN, RawClient


def base(broker):
    return f"http://127.0.0.1:{broker.port}"


async def read_response(stream, client: h11.Connection, timeout: float = 5) -> tuple[h11.Response, bytes]:
    """The next whole response on a raw connection (an h11 client keeps the state)."""
    response, body = None, b""
    with trio.fail_after(timeout):
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return response, body
            elif isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue: the answer follows
            else:
                raise AssertionError(f"connection ended instead of a response: {event}")


async def test_health_and_metrics(broker):
    health = await http_request("GET", base(broker) + "/health")
    assert health.status == 200 and json.loads(health.body) == {"status": "ok"}
    metrics = await http_request("GET", base(broker) + "/metrics")
    assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain")
    for name in ("broker_connections_open", "broker_rooms_open", "broker_messages_in_total",
                 "broker_messages_out_total", "broker_evictions_total", "broker_node_info"):
        assert name in metrics.text


async def test_plain_get_on_websocket_path_is_426_with_text(broker):
    response = await http_request("GET", base(broker) + "/ws")
    assert response.status == 426
    assert response.headers["upgrade"] == "websocket"
    assert "WebSocket endpoint" in response.text and response.text.count("\n") == 1


async def test_unknown_path_is_404_with_text(broker):
    response = await http_request("GET", base(broker) + "/nope?token=secret123")
    assert response.status == 404 and response.text == "no route for /nope (GET / lists the endpoints)\n"


async def test_wrong_method_is_405(broker):
    response = await http_request("GET", base(broker) + "/api/publish", headers={"X-API-Key": API_KEY})
    assert response.status == 405 and response.headers["allow"] == "POST"
    assert (await http_request("POST", base(broker) + "/health")).status == 405


async def test_publish_needs_the_api_key(broker):
    body = b'{"jobId":"j","type":"job_status","data":{"status":"RUNNING"}}'
    missing = await http_request("POST", base(broker) + "/api/publish", body=body)
    assert missing.status == 401
    wrong = await http_request("POST", base(broker) + "/api/publish", body=body,
                               headers={"Authorization": "Bearer wrong-key-0000"})
    assert wrong.status == 401
    ok = await http_request("POST", base(broker) + "/api/publish", body=body,
                            headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status == 200 and json.loads(ok.body) == {"status": "ok", "jobId": "j", "type": "job_status", "seq": 1}
    via_header = await http_request("POST", base(broker) + "/api/publish", body=body, headers={"X-API-Key": API_KEY})
    assert json.loads(via_header.body)["seq"] == 2


async def test_publish_bad_body_is_400_with_error_json(broker):
    response = await http_request("POST", base(broker) + "/api/publish", body=b'{"jobId":"j","type":"job_status"}',
                                  headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status == 400
    error = json.loads(response.body)
    assert error["type"] == "error" and error["code"] == "BAD_REQUEST" and "data.status" in error["message"]


async def test_publish_too_large_is_413(tmp_path, nursery):
    from broker import serve
    from tests.support.helpers import make_config

    broker = await nursery.start(serve, make_config(tmp_path, server={"max_body_bytes": 1024}))
    response = await http_request("POST", base(broker) + "/api/publish", body=b"x" * 5000,
                                  headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status == 413


async def test_keep_alive_serves_several_requests_on_one_connection(broker):
    stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    await stream.send_all(request * 3)  # pipelined
    client = h11.Connection(h11.CLIENT)
    for _ in range(3):
        client.send(h11.Request(method="GET", target="/health", headers=[("Host", "x")]))
        client.send(h11.EndOfMessage())
        response, body = await read_response(stream, client)
        assert response.status_code == 200 and json.loads(body) == {"status": "ok"}
        client.start_next_cycle()
    await stream.aclose()


async def test_keep_alive_has_no_request_cap(broker):
    """A publisher on one keep-alive connection never meets an unannounced close."""
    stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
    client = h11.Connection(h11.CLIENT)
    for _ in range(1100):
        await stream.send_all(client.send(h11.Request(method="GET", target="/health", headers=[("Host", "x")]))
                              + client.send(h11.EndOfMessage()))
        response, _ = await read_response(stream, client)
        assert response.status_code == 200 and client.our_state is h11.DONE and client.their_state is h11.DONE
        client.start_next_cycle()
    await stream.aclose()


async def test_malformed_requests_never_hurt_the_server(broker):
    for garbage in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 50,  # a TLS hello
                    b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                    b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\n\r\n"):
        stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
        await stream.send_all(garbage)
        with trio.fail_after(5):
            reply = await stream.receive_some(65536)
        assert reply.startswith(b"HTTP/1.1 4")
        await stream.aclose()
    assert (await http_request("GET", base(broker) + "/health")).status == 200


async def test_slow_request_head_times_out_with_408(tmp_path, nursery):
    from broker import serve
    from tests.support.helpers import make_config

    broker = await nursery.start(serve, make_config(tmp_path, server={"request_head_timeout": 0.3}))
    stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
    await stream.send_all(b"GET /health HTTP/1.1\r\n")  # never finished
    with trio.fail_after(5):
        reply = await stream.receive_some(65536)
    assert reply.startswith(b"HTTP/1.1 408")
    # a connection that sends nothing at all is just closed
    idle = await trio.open_tcp_stream("127.0.0.1", broker.port)
    with trio.fail_after(5):
        assert await idle.receive_some(100) == b""


async def test_head_gets_the_headers_and_no_body(broker, caplog):
    stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
    client = h11.Connection(h11.CLIENT)
    expected = {"/health": 200, "/metrics": 200, "/nope": 404, "/ws": 426, "/api/publish": 401}
    for target, status in expected.items():
        await stream.send_all(client.send(h11.Request(method="HEAD", target=target, headers=[("Host", "x")]))
                              + client.send(h11.EndOfMessage()))
        response, body = await read_response(stream, client)  # h11 knows a HEAD response has no body
        assert (response.status_code, body) == (status, b""), target
        assert int(dict(response.headers)[b"content-length"]) > 0
        client.start_next_cycle()
    # nothing stray was sent after those heads: the same connection still serves a GET
    await stream.send_all(client.send(h11.Request(method="GET", target="/health", headers=[("Host", "x")]))
                          + client.send(h11.EndOfMessage()))
    response, body = await read_response(stream, client)
    assert response.status_code == 200 and json.loads(body) == {"status": "ok"}
    await stream.aclose()
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def raw_exchange(port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    """Send ``data`` in one write; everything the server sends until it closes."""
    stream = await trio.open_tcp_stream(host, port)
    await stream.send_all(data)
    received = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            received += chunk
    await stream.aclose()
    return received


async def test_request_head_bound_holds_when_the_head_comes_in_one_read(tmp_path, nursery):
    from broker import serve
    from tests.support.helpers import make_config

    broker = await nursery.start(serve, make_config(tmp_path, server={"max_request_head_bytes": 2048}))
    small = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 1900 + b"\r\nConnection: close\r\n\r\n"
    assert len(small) < 2048 and (await raw_exchange(broker.port, small)).startswith(b"HTTP/1.1 200")
    large = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 5000 + b"\r\n\r\n"
    reply = await raw_exchange(broker.port, large)
    assert reply.startswith(b"HTTP/1.1 431") and reply.endswith(b"request head larger than 2048 bytes\n")


async def test_expect_100_continue_is_answered_before_the_body(broker):
    body = b'{"jobId":"j","type":"job_status","data":{"status":"RUNNING"}}'
    stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
    await stream.send_all(publish_head(body, b"Expect: 100-continue"))
    with trio.fail_after(5):
        interim = await stream.receive_some(65536)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await stream.send_all(body)
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="POST", target="/api/publish",
                            headers=[("Host", "x"), ("Content-Length", str(len(body)))]))
    client.send(h11.Data(data=body))
    client.send(h11.EndOfMessage())
    response, answer = await read_response(stream, client)
    assert response.status_code == 200 and json.loads(answer)["seq"] == 1
    await stream.aclose()


async def test_expect_100_continue_with_a_refusal_sends_no_100(tmp_path, nursery):
    from broker import serve
    from tests.support.helpers import make_config

    broker = await nursery.start(serve, make_config(tmp_path, server={"max_body_bytes": 1024}))
    too_large = publish_head(b"x" * 5000, b"Expect: 100-continue")
    reply = await raw_exchange(broker.port, too_large)
    assert reply.startswith(b"HTTP/1.1 413") and b" 100 " not in reply
    no_key = too_large.replace(b"X-API-Key", b"X-Other")
    reply = await raw_exchange(broker.port, no_key)
    assert reply.startswith(b"HTTP/1.1 401") and b" 100 " not in reply


async def test_content_length_with_transfer_encoding_is_400_and_closed(broker):
    body = b'{"jobId":"j","type":"job_status","data":{"status":"RUNNING"}}'
    smuggled = publish_head(body, b"Transfer-Encoding: chunked") + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    reply = await raw_exchange(broker.port, smuggled + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400") and b"Content-Length and Transfer-Encoding" in reply
    assert reply.count(b"HTTP/1.1") == 1  # closed: the request after it is not served
    first = await http_request("POST", base(broker) + "/api/publish", body=body, headers={"X-API-Key": API_KEY})
    assert json.loads(first.body)["seq"] == 1  # the refused request published nothing


async def read_responses(stream, count: int) -> list[tuple[h11.Response, bytes]]:
    """The next ``count`` whole responses to GET-like requests on a raw connection."""
    client = h11.Connection(h11.CLIENT)
    responses = []
    for _ in range(count):
        client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        client.send(h11.EndOfMessage())
        responses.append(await read_response(stream, client))
        client.start_next_cycle()
    return responses


async def test_common_and_unusual_requests_interleave_on_one_connection(broker):
    """The fast path and h11 take turns on one connection: each answer in order, none lost."""
    body = b'{"jobId":"j","type":"job_status","data":{"status":"RUNNING"}}'
    chunked = publish_head(b"").replace(b"Content-Length: 0", b"Transfer-Encoding: chunked") \
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    requests = [publish_head(body) + body,  # common: the fast path
                chunked,  # h11
                b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /health HTTP/1.1\nHost: x\n\n",  # bare LF: h11
                publish_head(body, b"Expect: 100-continue") + body,  # h11, body sent without waiting
                b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n",
                publish_head(body) + body]
    stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
    await stream.send_all(b"".join(requests))
    client = h11.Connection(h11.CLIENT)
    statuses, seqs = [], []
    for request in requests:
        method = "HEAD" if request.startswith(b"HEAD") else "GET"
        client.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        client.send(h11.EndOfMessage())
        response, answer = await read_response(stream, client)  # after a 100 Continue for the Expect one
        statuses.append(response.status_code)
        if request.startswith(b"POST"):
            seqs.append(json.loads(answer)["seq"])
        assert b"close" not in dict(response.headers).get(b"connection", b"")
        client.start_next_cycle()
    assert statuses == [200] * len(requests) and seqs == [1, 2, 3, 4]
    await stream.aclose()


async def test_a_body_not_read_ends_a_keep_alive_connection_with_close(broker):
    reply = await raw_exchange(broker.port, b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                                            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 405") and b"\r\nConnection: close\r\n" in reply
    assert reply.count(b"HTTP/1.1 ") == 1  # the next request is not read as part of the body


async def test_a_keep_alive_body_over_the_bound_is_413_and_closed(tmp_path, nursery):
    from broker import serve
    from tests.support.helpers import make_config

    broker = await nursery.start(serve, make_config(tmp_path, server={"max_body_bytes": 1024}))
    reply = await raw_exchange(broker.port, publish_head(b"x" * 5000) + b"x" * 5000)
    assert reply.startswith(b"HTTP/1.1 413") and b"\r\nConnection: close\r\n" in reply


async def test_a_body_that_comes_later_is_waited_for_then_times_out_with_408(tmp_path, nursery):
    from broker import serve
    from tests.support.helpers import make_config

    broker = await nursery.start(serve, make_config(tmp_path, server={"request_head_timeout": 0.3}))
    body = b'{"jobId":"j","type":"job_status","data":{"status":"RUNNING"}}'
    stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
    await stream.send_all(publish_head(body) + body[:10])
    await stream.send_all(body[10:])  # the rest in another write
    [(response, answer)] = await read_responses(stream, 1)
    assert response.status_code == 200 and json.loads(answer)["seq"] == 1
    await stream.send_all(publish_head(body) + body[:10])  # and never the rest
    received = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 408") and b"request body not received in time" in received
    assert b"\r\nConnection: close\r\n" in received
    await stream.aclose()


def upgrade_request(target: str = "/ws", version: bytes = b"1.1", **changes: bytes | None) -> bytes:
    """An upgrade request head; ``changes`` replace (or with None, drop) headers."""
    headers = {"Host": b"x", "Upgrade": b"websocket", "Connection": b"Upgrade",
               "Sec-WebSocket-Key": b"dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": b"13",
               "Authorization": b"Bearer " + DEMO_TOKEN.encode()}
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value
    lines = [b"GET " + target.encode() + b" HTTP/" + version] + [k.encode() + b": " + v for k, v in headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def test_a_pipelined_get_then_an_upgrade_gets_both_answers(broker):
    stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
    await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + upgrade_request())
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/health", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    response, _ = await read_response(stream, client)
    assert response.status_code == 200
    received = client.trailing_data[0]
    with trio.fail_after(5):
        while b"\r\n\r\n" not in received:
            received += await stream.receive_some(65536)
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101") and b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    frames = wsproto.frame_protocol.FrameProtocol(client=True, extensions=[])
    frames.receive_bytes(rest)
    with trio.fail_after(5):
        while not (received_frames := list(frames.received_frames())):
            frames.receive_bytes(await stream.receive_some(65536))
    assert json.loads(received_frames[0].payload)["type"] == "connection_established"
    await stream.aclose()


@pytest.mark.parametrize(("request_bytes", "status", "reason"), [
    (upgrade_request(Sec_WebSocket_Key=None), 400, b"missing Sec-WebSocket-Key header\n"),
    (upgrade_request(Sec_WebSocket_Key=b"abc"), 400, b"Sec-WebSocket-Key must be the base64 encoding of 16 bytes\n"),
    (upgrade_request(Sec_WebSocket_Version=b"8"), 426, b"this server speaks 13\n"),
    (upgrade_request(version=b"1.0"), 400, b"a WebSocket upgrade needs HTTP/1.1\n"),
    (upgrade_request(Connection=b"keep-alive"), 400, b"the Connection header must include 'Upgrade'\n"),
])
async def test_a_bad_upgrade_is_refused_saying_why(broker, request_bytes, status, reason):
    reply = await raw_exchange(broker.port, request_bytes)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % status) and body.endswith(reason) and body.count(b"\n") == 1
    if status == 426:
        assert b"\r\nSec-WebSocket-Version: 13" in head


async def test_a_failed_handshake_frees_its_address_slot_at_once(tmp_path, nursery):
    from broker import serve
    from tests.support.helpers import make_config

    broker = await nursery.start(serve, make_config(tmp_path, limits={"max_connections_per_ip": 1}))
    for _ in range(3):
        reply = await raw_exchange(broker.port, upgrade_request(Sec_WebSocket_Key=None))
        assert reply.startswith(b"HTTP/1.1 400")
    stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
    client = RawClient(stream)
    with trio.fail_after(5):
        assert (await client.handshake(headers=[(b"Authorization", b"Bearer " + DEMO_TOKEN.encode())]))[0] == 101
        assert (await client.next_json())["type"] == "connection_established"
    await stream.aclose()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="/abc:?#%=&.;@-", max_size=20))
def test_the_path_shortcut_agrees_with_urlsplit(target):
    assert _path(target) == urlsplit(target).path


async def test_pipelined_publishes_with_a_bad_one_and_a_get_are_answered_in_request_order(broker):
    """Publishes are answered by a second task while the next requests are read: the
    answers still come in request order, a bad publish gets its 400 in its place, a
    GET waits for the publishes before it, and the connection stays open."""
    good = [b'{"jobId":"jp","type":"job_status","data":{"status":"s%d"}}' % i for i in range(4)]
    bad = b'{"jobId":"jp","type":"no_such_type"}'
    requests = [publish_head(good[0]) + good[0], publish_head(bad) + bad, publish_head(good[1]) + good[1],
                b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", publish_head(good[2]) + good[2],
                publish_head(good[3]) + good[3]]
    stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
    await stream.send_all(b"".join(requests))
    answers = [(response.status_code, json.loads(body)) for response, body in await read_responses(stream, 6)]
    assert [status for status, _ in answers] == [200, 400, 200, 200, 200, 200]
    assert [body.get("seq") for _, body in answers] == [1, None, 2, None, 3, 4]
    assert answers[1][1]["code"] == "BAD_REQUEST" and answers[3][1]["status"] == "ok"
    await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_responses(stream, 1))[0][0].status_code == 200
    await stream.aclose()


class _RecordingStream(trio.abc.Stream):
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def send_all(self, data) -> None:
        self.writes.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None: ...

    async def receive_some(self, max_bytes=None) -> bytes:
        return b""

    async def aclose(self) -> None: ...


async def test_pipelined_answers_already_there_share_one_write_and_keep_their_order(broker):
    """The answer writer puts each answer and those behind it that are already answered
    into one write (a commit answers a whole batch at once); one not answered yet ends
    the write and goes first in the next."""
    front = broker.broker.http_front()
    stream = _RecordingStream()
    http = Http1Connection(stream, max_head_bytes=8192, max_body_bytes=65536, head_timeout=1, keepalive_timeout=1)
    pipeline = PublishPipeline()
    replies: list[Reply[int]] = [Reply() for _ in range(5)]
    event = JobEvent("jw", "job_status", {"status": "s"})
    for reply in replies:
        await pipeline.add(PublishAnswer("/api/publish", [event], [reply]))
    for seq, reply in enumerate(replies[:3], 1):  # the first three commits are back
        reply.set(seq)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(front._write_answers, http, pipeline, nursery.cancel_scope)
            await trio.testing.wait_all_tasks_blocked()
            assert len(stream.writes) == 1 and stream.writes[0].count(b"HTTP/1.1 200") == 3
            replies[3].set(4)
            replies[4].set(5)
            pipeline.close()
    assert len(stream.writes) == 2 and stream.writes[1].count(b"HTTP/1.1 200") == 2
    seqs = [int(seq) for seq in re.findall(rb'"seq": ?(\d+)', b"".join(stream.writes))]
    assert seqs == [1, 2, 3, 4, 5]
    assert not pipeline.busy
