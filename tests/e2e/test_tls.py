"""wss:// and https:// served by the broker itself, with a test CA (trustme)."""

import json
import ssl

import pytest
import trio
import trio_websocket
import trustme

from broker import serve
from broker.tools.httpclient import http_request
from tests.support.helpers import make_config, recv_json


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
async def tls_broker(nursery, tmp_path, ca):
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    for extra in cert.cert_chain_pems[1:]:
        with open(tmp_path / "cert.pem", "ab") as f:
            f.write(extra.bytes())
    config = make_config(tmp_path, server={"tls": {"cert_file": str(tmp_path / "cert.pem"),
                                                   "key_file": str(tmp_path / "key.pem")}})
    return await nursery.start(serve, config)


def client_context(ca):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_wss_end_to_end(tls_broker, ca):
    url = f"wss://localhost:{tls_broker.port}/ws?token=demo-token"
    assert tls_broker.url().startswith("wss://")
    async with trio_websocket.open_websocket_url(url, ssl_context=client_context(ca)) as ws:
        assert (await recv_json(ws))["type"] == "connection_established"
        await ws.send_message('{"type":"join_job","jobId":"job-tls"}')
        await recv_json(ws)
        await tls_broker.publish("job-tls", "job_status", {"status": "SECURE"})
        assert (await recv_json(ws))["data"]["status"] == "SECURE"


async def test_https_health(tls_broker, ca):
    response = await http_request("GET", f"https://localhost:{tls_broker.port}/health", ssl_context=client_context(ca))
    assert response.status == 200 and json.loads(response.body) == {"status": "ok"}


async def test_untrusted_client_fails_and_server_survives(tls_broker, ca):
    with pytest.raises((ssl.SSLError, trio.BrokenResourceError, OSError, trio_websocket.HandshakeError)):
        await http_request("GET", f"https://localhost:{tls_broker.port}/health", ssl_context=ssl.create_default_context())
    plain = await trio.open_tcp_stream("127.0.0.1", tls_broker.port)  # plain HTTP to a TLS port
    await plain.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(5):
        while await plain.receive_some(1024):
            pass
    response = await http_request("GET", f"https://localhost:{tls_broker.port}/health", ssl_context=client_context(ca))
    assert response.status == 200
