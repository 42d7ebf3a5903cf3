"""SSE framing (broker.protocols.sse): pure, no event loop. What the server writes must
come out of a reader exactly, however the bytes are split on the way."""

import json

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.protocols import text_frame
from broker.protocols.frames import binary_frame
from broker.protocols.sse import (
    LAST_CHUNK,
    Comment,
    Event,
    SseParser,
    chunk,
    close_event,
    comment,
    event,
    events_of,
    ping_comment,
    pong_seq,
    response_head,
    stream_event,
    text_payloads,
)


def parse_all(data: bytes, split: int | None = None) -> list:
    parser = SseParser()
    if split is None:
        return parser.feed(data)
    return parser.feed(data[:split]) + parser.feed(data[split:])


@given(st.text(max_size=2000), st.integers(min_value=0, max_value=3000))
def test_any_text_round_trips_as_one_event_however_split(text, split):
    encoded = event(text.encode("utf-8"))
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    assert parse_all(encoded, min(split, len(encoded))) == [Event(normalised)]


def test_json_message_is_one_data_line():
    payload = json.dumps({"type": "job_status", "seq": 1, "data": {"note": "a\nb"}}).encode()
    assert event(payload) == b"data: " + payload + b"\n\n"  # JSON escapes its line breaks


def test_named_events_comments_and_the_stream_frame():
    data = stream_event("abc") + ping_comment(7) + event(b'{"type":"pong"}') + close_event(4003, "slow consumer")
    assert parse_all(data) == [
        Event('{"streamId": "abc"}', "stream"),
        Comment("ping 7"),
        Event('{"type":"pong"}'),
        Event('{"code": 4003, "reason": "slow consumer"}', "close"),
    ]
    assert comment("a\nb") == b":a b\n\n"  # a comment cannot smuggle a field in


def test_reader_follows_the_whatwg_field_rules():
    data = b"event:close\r\ndata:x\r\ndata: y\r\n\r\n: note\rdata\n\nid: 3\ndata: z\n\n"
    assert parse_all(data) == [Event("x\ny", "close"), Comment("note"), Event(""), Event("z")]
    assert parse_all(b"data: partial\n") == []  # not dispatched before the blank line


def test_reader_bounds_a_line_without_an_end():
    parser = SseParser(max_line_bytes=100)
    with pytest.raises(ValueError):
        parser.feed(b"data: " + b"x" * 200)


@given(st.lists(st.binary(max_size=70_000), min_size=1, max_size=4))
def test_text_payloads_invert_text_frames_back_to_back(payloads):
    assert text_payloads(b"".join(text_frame(payload) for payload in payloads)) == payloads


def test_a_batch_of_frames_is_one_event_each():
    batch = text_frame(b'{"seq":1}') + text_frame(b'{"seq":2}')
    assert parse_all(events_of(batch)) == [Event('{"seq":1}'), Event('{"seq":2}')]


def test_text_payloads_refuse_other_frames():
    for bad in (binary_frame(b"x"), text_frame(b"xy")[:-1], text_frame(b"x") + binary_frame(b"y"),
                text_frame(b"x" * 300)[:3], b""):
        with pytest.raises(ValueError):
            text_payloads(bad)


def test_pong_seq_only_for_a_pong_with_a_number():
    assert pong_seq('{"type":"pong","seq":3}') == 3
    assert pong_seq('{"type": "pong", "seq": 0}') == 0
    for other in ('{"type":"ping"}', '{"type":"pong"}', '{"type":"pong","seq":true}', '{"type":"pong","seq":-1}',
                  '{"type":"pong","seq":"3"}', "pong", '["pong"]', '{"type":"pong","seq":1,"pad":"' + "x" * 80 + '"}'):
        assert pong_seq(other) is None, other


@pytest.mark.parametrize("chunked", [True, False])
def test_response_is_streamed_without_content_length_and_reads_back_through_h11(chunked):
    body = [event(b'{"a":1}'), ping_comment(1), event(b'{"b":2}')]
    head = response_head(chunked, [("Access-Control-Allow-Origin", "https://app.example")])
    wire = head + (b"".join(chunk(part) for part in body) + LAST_CHUNK if chunked else b"".join(body))
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/sse", headers=[("Host", "x")]))
    client.receive_data(wire)
    if not chunked:
        client.receive_data(b"")  # the server closes: the end of the body
    response = client.next_event()
    headers = dict(response.headers)
    assert response.status_code == 200 and b"content-length" not in headers
    assert headers[b"x-accel-buffering"] == b"no" and headers[b"content-type"].startswith(b"text/event-stream")
    assert headers[b"access-control-allow-origin"] == b"https://app.example"
    data = b""
    while isinstance(received := client.next_event(), h11.Data):
        data += received.data
    assert isinstance(received, h11.EndOfMessage)
    assert parse_all(data) == [Event('{"a":1}'), Comment("ping 1"), Event('{"b":2}')]
