"""The one-port HTTP front, end to end over loopback."""

import json

import trio

from broker.httpclient import http_request

from .helpers import API_KEY


def base(broker):
    return f"http://127.0.0.1:{broker.port}"


async def test_health_and_metrics(broker):
    health = await http_request("GET", base(broker) + "/health")
    assert health.status == 200 and json.loads(health.body) == {"status": "ok"}
    metrics = await http_request("GET", base(broker) + "/metrics")
    assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain")
    for name in ("broker_connections_open", "broker_rooms_open", "broker_messages_in_total",
                 "broker_messages_out_total", "broker_evictions_total"):
        assert name in metrics.text


async def test_plain_get_on_websocket_path_is_426_with_text(broker):
    response = await http_request("GET", base(broker) + "/ws")
    assert response.status == 426
    assert response.headers["upgrade"] == "websocket"
    assert "WebSocket endpoint" in response.text and response.text.count("\n") == 1


async def test_unknown_path_is_404_with_text(broker):
    response = await http_request("GET", base(broker) + "/nope?token=secret123")
    assert response.status == 404 and response.text == "no route for /nope\n"


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

    from .helpers import make_config

    broker = await nursery.start(serve, make_config(tmp_path, server={"max_body_bytes": 1024}))
    response = await http_request("POST", base(broker) + "/api/publish", body=b"x" * 5000,
                                  headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status == 413


async def test_keep_alive_serves_several_requests_on_one_connection(broker):
    stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    await stream.send_all(request * 3)
    received = b""
    with trio.fail_after(5):
        while received.count(b"HTTP/1.1 200") < 3:
            received += await stream.receive_some(65536)
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

    from .helpers import make_config

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
