"""The fast path's request-head parser against h11, the parser it stands in for."""

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.protocols.http_head import parse_common_head, response_head
from broker.transport.http1 import reason_phrase

PUBLISH = (b"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX-API-Key: k\r\n"
           b"Content-Type: application/json\r\nContent-Length: 12\r\n\r\n")


def h11_reading(head: bytes, body: bytes) -> tuple[h11.Request, h11.Connection]:
    """What h11 makes of ``head`` followed by ``body`` and a next request's first bytes."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head + body + b"GET /next")
    event = conn.next_event()
    assert isinstance(event, h11.Request), event
    return event, conn


def test_the_common_publish_head_is_parsed():
    head = parse_common_head(PUBLISH)
    assert head is not None
    assert (head.method, head.target, head.http_version, head.content_length) == \
        (b"POST", b"/api/publish", b"1.1", 12)
    assert head.headers[0] == (b"host", b"127.0.0.1:8080") and head.raw_headers[1] == (b"X-API-Key", b"k")


UPGRADE = (b"GET /ws?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: WebSocket\r\n"
           b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer a.b.c\r\n\r\n")


def test_a_plain_websocket_upgrade_is_parsed():
    head = parse_common_head(UPGRADE)
    assert head is not None and head.upgrade
    assert (head.method, head.target, head.content_length) == (b"GET", b"/ws?x=1", None)
    assert (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==") in head.headers
    event, conn = h11_reading(UPGRADE, b"")
    assert list(event.headers) == head.headers
    assert isinstance(conn.next_event(), h11.EndOfMessage) and conn.next_event() is h11.PAUSED
    assert conn.trailing_data[0] == b"GET /next"  # the bytes after the head, for the session


def test_a_get_without_content_length_has_no_body_length():
    head = parse_common_head(b"GET /health HTTP/1.1\r\nhost: x\r\nConnection: Keep-Alive\r\n\r\n")
    assert head is not None and head.content_length is None and head.method == b"GET"


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",  # HTTP/1.0: keep-alive rules differ
    b"GET / HTTP/1.1\r\n\r\n",  # no Host
    b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"POST /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",  # 405 is h11's path
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",  # no Connection
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nConnection: Upgrade\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\r\n",  # Connection: Upgrade, no Upgrade
    b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1234567890123456789\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",  # obs-fold
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\rY\r\n\r\n",
    b"GET / HTTP/1.1\nHost: x\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n",  # not a whole head
])
def test_anything_unusual_is_left_to_h11(head):
    assert parse_common_head(head) is None


@pytest.mark.parametrize("status", [200, 201, 400, 401, 404, 405, 413, 426, 503, 599])
def test_response_heads_read_back_through_h11(status):
    body = b'{"status":"ok"}'
    data = response_head(status, "application/json", len(body), [("Retry-After", "1")]) + body
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    response = client.next_event()
    assert isinstance(response, h11.Response)
    assert (response.status_code, response.reason) == (status, reason_phrase(status).encode())
    assert dict(response.headers)[b"retry-after"] == b"1"
    assert client.next_event().data == body
    assert isinstance(client.next_event(), h11.EndOfMessage)
    assert client.their_state is h11.DONE  # keep-alive


def test_a_closing_response_says_so():
    data = response_head(200, "text/plain", 0, close=True)
    assert data.endswith(b"Connection: close\r\n\r\n")


# Random heads, built from parts both common and hostile: each part is a valid one
# most of the time, so that many heads are accepted and compared.
def _mostly(valid, hostile):
    return st.tuples(st.integers(0, 11), valid, hostile).map(lambda t: t[2] if t[0] == 0 else t[1])


_NAMES = _mostly(st.sampled_from([b"Host", b"host", b"Content-Length", b"content-length", b"X-API-Key",
                                  b"Authorization", b"Content-Type", b"X-Pad", b"Connection", b"User-Agent"]),
                 st.sampled_from([b"Transfer-Encoding", b"Expect", b"Upgrade", b"Bad Name", b"", b"X\x00",
                                  b"Host ", b" Host", b"HOST", b"X\xff"]))
_VALUES = _mostly(st.sampled_from([b"x", b"127.0.0.1:8080", b"12", b"0", b"007", b"keep-alive", b"Keep-Alive",
                                   b"application/json", b"Bearer k", b"a, b", b"\xff\xfe", b" x ", b"\tx\t"]),
                  st.sampled_from([b"-1", b"1 2", b"close", b"upgrade", b"chunked", b"100-continue", b"",
                                   b"a\x7fb", b"a\x00b", b"a\rb", b"a\x0bb"])
                  | st.binary(max_size=12) | st.text(alphabet="abc 019\t,;=-:/", max_size=12).map(str.encode))
_UPGRADE_LINES = st.tuples(
    _mostly(st.sampled_from([b"Upgrade", b"upgrade", b"Connection", b"connection", b"Sec-WebSocket-Key",
                             b"Sec-WebSocket-Version"]), st.sampled_from([b"Upgrade ", b"Content-Length"])),
    st.sampled_from([b": ", b":"]),
    _mostly(st.sampled_from([b"websocket", b"WebSocket", b"Upgrade", b"upgrade", b"keep-alive, Upgrade",
                             b"Upgrade,keep-alive", b"13", b"dGhlIHNhbXBsZSBub25jZQ=="]),
            st.sampled_from([b"h2c", b"websocket, h2c", b"Upgrade, close", b"Upgrade,", b"close", b"0",
                             b"websocket\x00", b"Upgrade\tfoo"])),
).map(b"".join)
_SEPARATORS = _mostly(st.sampled_from([b": ", b":", b":\t", b":  "]), st.sampled_from([b" : ", b" :", b";"]))
_HEADER_LINES = st.lists(st.tuples(_NAMES, _SEPARATORS, _VALUES).map(b"".join), max_size=6)
_REQUEST_LINES = st.tuples(
    _mostly(st.sampled_from([b"GET", b"POST", b"HEAD", b"DELETE", b"get", b"M-SEARCH"]),
            st.sampled_from([b"G ET", b"", b"GET\x00", b"\xffGET"])),
    _mostly(st.just(b" "), st.sampled_from([b"  ", b"\t"])),
    _mostly(st.sampled_from([b"/", b"/api/publish", b"/health?x=1", b"*", b"http://h/p", b"/%41"]),
            st.sampled_from([b"/a b", b"/\x7f", b"/\xc3\xa9"]) | st.binary(min_size=1, max_size=8)),
    _mostly(st.just(b" HTTP/1.1"), st.sampled_from([b" HTTP/1.0", b" HTTP/2.0", b" http/1.1", b" HTTP/1.1 ", b""])),
).map(b"".join)
_LINE_ENDS = _mostly(st.just(b"\r\n"), st.sampled_from([b"\n", b"\r\n ", b"\r\n\t", b"\r"]))


@st.composite
def heads_of(draw, lines):
    """``lines`` with mostly a Host among them (so the rest of the rules get exercised),
    each ended mostly by CRLF, then the empty line."""
    if draw(st.integers(0, 3)):
        lines.insert(draw(st.integers(1, len(lines))), b"Host: x")
    ends = [draw(_LINE_ENDS) for _ in lines]
    return b"".join(line + end for line, end in zip(lines, ends, strict=True)) + b"\r\n"


@st.composite
def heads(draw):
    return draw(heads_of([draw(_REQUEST_LINES), *draw(_HEADER_LINES)]))


@st.composite
def upgrade_heads(draw):
    """Upgrade proposals: a GET request line, ``Upgrade`` and ``Connection`` lines, each
    mostly the plain kind, among the random lines above."""
    request_line = draw(_mostly(st.sampled_from([b"GET /ws HTTP/1.1", b"GET /ws?token=a.b.c HTTP/1.1"]),
                                _REQUEST_LINES))
    lines = [request_line, *draw(_HEADER_LINES)]
    for line in [draw(_mostly(st.just(b"Upgrade: websocket"), _UPGRADE_LINES)),
                 draw(_mostly(st.sampled_from([b"Connection: Upgrade", b"connection: keep-alive, Upgrade"]),
                              _UPGRADE_LINES)),
                 *draw(st.lists(_UPGRADE_LINES, max_size=3))]:
        lines.insert(draw(st.integers(1, len(lines))), line)
    return draw(heads_of(lines))


@pytest.mark.slow
@settings(max_examples=300, deadline=None)  # 20 000 run once by hand: no difference
@given(heads())
def test_whatever_the_parser_accepts_h11_reads_the_same_way(head):
    assert_h11_agrees(head)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(upgrade_heads())
def test_whatever_upgrade_the_parser_accepts_h11_reads_the_same_way(head):
    assert_h11_agrees(head)


def assert_h11_agrees(head: bytes) -> None:
    parsed = parse_common_head(head) if head.endswith(b"\r\n\r\n") else None
    if parsed is None:
        return  # h11 reads it, error statuses included
    length = parsed.content_length or 0
    event, conn = h11_reading(head, b"b" * length)
    assert event.method == parsed.method and event.target == parsed.target
    assert event.http_version == parsed.http_version
    assert list(event.headers) == parsed.headers
    assert list(event.headers.raw_items()) == parsed.raw_headers
    assert not conn.they_are_waiting_for_100_continue
    body = b""
    while isinstance(event := conn.next_event(), h11.Data):
        body += event.data
    assert isinstance(event, h11.EndOfMessage) and len(body) == length  # the same framing
    assert conn.trailing_data[0] == b"GET /next"  # and the same end of the head
    # h11 sees an upgrade proposal exactly when the parser does
    assert (conn.their_state is h11.MIGHT_SWITCH_PROTOCOL) == parsed.upgrade
    conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
    conn.send(h11.EndOfMessage())
    assert conn.our_state is h11.DONE  # h11 keeps the connection alive too


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"X-API-Key", b"Content-Type", b"Accept", b"User-Agent"]),
                          st.text(alphabet="abcXYZ019-_/.;=", min_size=1, max_size=20).map(str.encode)),
                max_size=5),
       st.integers(0, 10_000), st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE"]))
def test_well_formed_heads_take_the_fast_path(extra, length, method):
    lines = [method + b" /api/publish HTTP/1.1", b"Host: 127.0.0.1", b"Content-Length: %d" % length]
    lines += [name + b": " + value for name, value in extra]
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    parsed = parse_common_head(head)
    assert parsed is not None and parsed.content_length == length
    event, _ = h11_reading(head, b"b" * length)
    assert list(event.headers) == parsed.headers
