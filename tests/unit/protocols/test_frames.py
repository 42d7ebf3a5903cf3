"""Our hand-built server frames must decode exactly in a real client (wsproto)."""

import wsproto.frame_protocol as fp
from hypothesis import given
from hypothesis import strategies as st

from broker.protocols import binary_frame, close_frame, ping_frame, text_frame


def client_decode(data: bytes):
    proto = fp.FrameProtocol(client=True, extensions=[])
    proto.receive_bytes(data)
    return list(proto.received_frames())


@given(st.text(max_size=70_000))
def test_text_frames_round_trip_through_a_client_decoder(text):
    frames = client_decode(text_frame(text.encode("utf-8")))
    assert len(frames) == 1
    frame = frames[0]
    assert frame.opcode is fp.Opcode.TEXT and frame.frame_finished and frame.message_finished
    assert frame.payload == text


@given(st.binary(max_size=70_000))
def test_binary_frames_round_trip(data):
    (frame,) = client_decode(binary_frame(data))
    assert frame.opcode is fp.Opcode.BINARY and bytes(frame.payload) == data


@given(st.lists(st.text(max_size=300), min_size=1, max_size=20))
def test_concatenated_frames_decode_in_order(texts):
    wire = b"".join(text_frame(t.encode()) for t in texts)
    assert [f.payload for f in client_decode(wire)] == texts


def test_length_boundaries():
    for n in (0, 125, 126, 65535, 65536):
        (frame,) = client_decode(binary_frame(b"x" * n))
        assert len(frame.payload) == n


@given(st.integers(min_value=3000, max_value=4999), st.text(max_size=200))
def test_close_frame_fits_control_limit_and_keeps_code(code, reason):
    frame = close_frame(code, reason)
    assert len(frame) <= 127
    (decoded,) = client_decode(frame)
    assert decoded.opcode is fp.Opcode.CLOSE
    assert decoded.payload[0] == code
    assert reason.startswith(decoded.payload[1])


def test_ping_frame():
    (decoded,) = client_decode(ping_frame(b"abc"))
    assert decoded.opcode is fp.Opcode.PING and decoded.payload == b"abc"
