"""The WebSocket upgrade check: what a real client sends passes, every defect gets the
status and one-line reason RFC 6455 asks for."""

import base64

import h11
import pytest
import wsproto
from hypothesis import given
from hypothesis import strategies as st
from wsproto.events import Request
from wsproto.utilities import generate_accept_token

from broker.protocols.handshake import (
    HandshakeError,
    UpgradeRequest,
    accept_key,
    validate_upgrade,
    wants_websocket,
)

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # the example of RFC 6455 section 1.3


def upgrade_headers(**changes: bytes | None) -> list[tuple[bytes, bytes]]:
    headers = {b"host": b"example.com", b"upgrade": b"websocket", b"connection": b"Upgrade",
               b"sec-websocket-key": KEY, b"sec-websocket-version": b"13"}
    for name, value in changes.items():
        key = name.replace("_", "-").lower().encode()
        if value is None:
            headers.pop(key, None)
        else:
            headers[key] = value
    return list(headers.items())


def refusal(method=b"GET", version=b"1.1", headers=None) -> HandshakeError:
    with pytest.raises(HandshakeError) as caught:
        validate_upgrade(method, version, upgrade_headers() if headers is None else headers)
    error = caught.value
    assert "\n" not in error.message and error.message
    return error


def test_accept_key_is_the_rfc_example():
    assert accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert accept_key(KEY.decode()) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@given(st.binary(min_size=16, max_size=16))
def test_any_16_byte_nonce_is_accepted_and_keyed_as_wsproto_does(nonce):
    key = base64.b64encode(nonce)
    upgrade = validate_upgrade(b"GET", b"1.1", upgrade_headers(sec_websocket_key=key))
    assert upgrade.key == key
    assert accept_key(key) == generate_accept_token(key).decode()


def test_a_real_client_request_passes():
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    data = client.send(Request(host="example.com", target="/ws", subprotocols=["chat.v2", "chat.v1"],
                               extensions=[wsproto.extensions.PerMessageDeflate()]))
    server = h11.Connection(h11.SERVER)
    server.receive_data(data)
    request = server.next_event()
    assert isinstance(request, h11.Request)
    upgrade = validate_upgrade(request.method, request.http_version, request.headers)
    assert upgrade.subprotocols == ("chat.v2", "chat.v1")
    assert len(upgrade.extensions) == 1 and upgrade.extensions[0].startswith("permessage-deflate")
    assert wants_websocket(request.headers)


def test_header_names_and_tokens_in_any_case_and_lists():
    headers = [(b"Upgrade", b"WebSocket"), (b"Connection", b"keep-alive, Upgrade"),
               (b"Sec-WebSocket-Key", KEY), (b"Sec-WebSocket-Version", b"13"),
               (b"Sec-WebSocket-Protocol", b"a, b"), (b"Sec-WebSocket-Protocol", b"c")]
    assert validate_upgrade("GET", "1.1", headers) == UpgradeRequest(KEY, ("a", "b", "c"))


def test_missing_key_is_400_saying_so():
    error = refusal(headers=upgrade_headers(sec_websocket_key=None))
    assert error.status == 400 and "missing Sec-WebSocket-Key" in error.message


@pytest.mark.parametrize("key", [b"abc", b"", b"dGhlIHNhbXBsZSBub25jZQ", b"dGhlIHNhbXBsZSBub25jZSE=",
                                 b"!!!!!!!!!!!!!!!!!!!!!!==", base64.b64encode(b"x" * 17)])
def test_a_key_that_is_not_16_bytes_of_base64_is_400(key):
    error = refusal(headers=upgrade_headers(sec_websocket_key=key))
    assert error.status == 400 and "16 bytes" in error.message


def test_two_keys_are_400():
    error = refusal(headers=upgrade_headers() + [(b"sec-websocket-key", KEY)])
    assert error.status == 400


@pytest.mark.parametrize("version", [b"8", b"12", b"13, 8", None])
def test_another_version_is_426_naming_13(version):
    error = refusal(headers=upgrade_headers(sec_websocket_version=version))
    assert error.status == 426 and ("Sec-WebSocket-Version", "13") in error.headers


def test_http_1_0_is_refused():
    error = refusal(version=b"1.0")
    assert error.status == 400 and "HTTP/1.1" in error.message


def test_only_get_upgrades():
    error = refusal(method=b"POST")
    assert error.status == 405 and ("Allow", "GET") in error.headers


def test_upgrade_and_connection_headers_are_required():
    assert "Connection" in refusal(headers=upgrade_headers(connection=b"keep-alive")).message
    assert "Upgrade" in refusal(headers=upgrade_headers(upgrade=b"h2c")).message


def test_a_malformed_subprotocol_list_is_400():
    assert refusal(headers=upgrade_headers(sec_websocket_protocol=b"chat v1")).status == 400


def test_wants_websocket_reads_the_upgrade_header_only():
    assert wants_websocket([(b"upgrade", b"websocket")])
    assert not wants_websocket([(b"upgrade", b"h2c"), (b"connection", b"upgrade")])
    assert not wants_websocket([])
