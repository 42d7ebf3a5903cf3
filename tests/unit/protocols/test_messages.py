import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.protocols import (
    Auth,
    ErrorCode,
    JobEvent,
    JoinJob,
    LeaveJob,
    Ping,
    ProtocolError,
    connection_established,
    decode_client_message,
    decode_publish,
    encode_job_event,
    error_message,
    format_timestamp,
)


def test_timestamp_format_is_iso_utc_millis_z():
    assert format_timestamp(1766393187.5) == "2025-12-22T08:46:27.500Z"
    assert format_timestamp(0) == "1970-01-01T00:00:00.000Z"


def test_timestamp_text_is_right_across_seconds_whatever_the_order_of_calls():
    # the whole second's text is kept from the last call: going back and forth stays right
    for epoch, text in [(1766393187.999, "2025-12-22T08:46:27.999Z"), (1766393188.0, "2025-12-22T08:46:28.000Z"),
                        (1766393187.001, "2025-12-22T08:46:27.001Z"), (0.25, "1970-01-01T00:00:00.250Z")]:
        assert format_timestamp(epoch) == text


@given(data=st.dictionaries(st.sampled_from(["timestamp", "jobId", "a", "é"]),
                            st.one_of(st.none(), st.integers(), st.text(max_size=5))))
def test_an_event_encoded_when_checked_is_sent_exactly_as_one_encoded_when_sequenced(data):
    """decode_publish keeps the encoded data for the commit; the bytes must not change."""
    data["stage"] = "build"
    checked = decode_publish(json.dumps({"jobId": "job-1", "type": "stage_completed", "data": data}).encode(),
                             max_event_bytes=1 << 20)[0]
    plain = JobEvent("job-1", "stage_completed", data)
    assert checked.data_json is not None and plain.data_json is None
    assert encode_job_event(checked, 7, 1766393187.5) == encode_job_event(plain, 7, 1766393187.5)
    sent = json.loads(encode_job_event(checked, 7, 1766393187.5))["data"]
    assert list(sent)[0] == "jobId" and sent["jobId"] == "job-1"
    assert isinstance(sent["timestamp"], str)


def test_client_messages_of_the_contract():
    assert decode_client_message('{"type":"join_job","jobId":"job-123"}') == JoinJob("job-123")
    assert decode_client_message('{"type":"join_job","jobId":"job-123","lastSeq":41}') == JoinJob("job-123", 41)
    assert decode_client_message('{"type":"leave_job","jobId":"job-123"}') == LeaveJob("job-123")
    assert decode_client_message('{"type":"ping"}') == Ping()
    assert decode_client_message('{"type":"auth","token":"t"}') == Auth("t")


@pytest.mark.parametrize(
    "frame, fragment",
    [
        ("not json", "not valid JSON"),
        ("[1,2]", "JSON object"),
        ('{"jobId":"x"}', '"type"'),
        ('{"type":"dance"}', 'unknown message type "dance"'),
        ('{"type":"join_job"}', '"jobId"'),
        ('{"type":"join_job","jobId":"../etc"}', '"jobId"'),
        ('{"type":"join_job","jobId":"job-1\\n"}', '"jobId"'),  # $ once let a trailing newline in
        ('{"type":"leave_job","jobId":"team-1\\n"}', '"jobId"'),
        ('{"type":"join_job","jobId":"a","lastSeq":-1}', "lastSeq"),
        ('{"type":"join_job","jobId":"a","lastSeq":true}', "lastSeq"),
        ('{"type":"join_job","jobId":"a","lastSeq":"4"}', "lastSeq"),
        ('{"type":"auth","token":""}', "token"),
        (b"\x00\x01", "binary"),
        ("[" * 100000, "not valid JSON"),
    ],
)
def test_bad_client_messages_get_bad_request_with_a_reason(frame, fragment):
    with pytest.raises(ProtocolError) as info:
        decode_client_message(frame)
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert fragment in info.value.message


@given(st.one_of(st.text(max_size=500), st.binary(max_size=200)))
def test_decoder_never_raises_anything_but_protocol_error(frame):
    try:
        decode_client_message(frame)
    except ProtocolError as exc:
        assert exc.code is ErrorCode.BAD_REQUEST and exc.message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@pytest.mark.slow
@given(st.dictionaries(st.sampled_from(["type", "jobId", "lastSeq", "token", "x"]), json_values, max_size=5))
def test_decoder_on_arbitrary_json_objects(obj):
    try:
        command = decode_client_message(json.dumps(obj))
    except ProtocolError as exc:
        assert exc.code is ErrorCode.BAD_REQUEST
    else:
        assert obj["type"] in ("join_job", "leave_job", "ping", "auth")
        assert isinstance(command, (JoinJob, LeaveJob, Ping, Auth))


def test_publish_body_and_encoded_event_match_the_contract():
    body = b'{"jobId":"job-123","type":"job_status","data":{"status":"RUNNING","currentStage":"OUTLINE","completedStages":["PLAN"]}}'
    (event,) = decode_publish(body)
    assert event == JobEvent("job-123", "job_status", {"status": "RUNNING", "currentStage": "OUTLINE", "completedStages": ["PLAN"]})
    sent = json.loads(encode_job_event(event, 42, 1766393187.5))
    assert sent == {
        "type": "job_status",
        "seq": 42,
        "data": {
            "jobId": "job-123",
            "status": "RUNNING",
            "currentStage": "OUTLINE",
            "completedStages": ["PLAN"],
            "timestamp": "2025-12-22T08:46:27.500Z",
        },
    }
    assert list(sent["data"])[0] == "jobId"


def test_publish_keeps_publisher_timestamp_and_accepts_arrays():
    events = decode_publish(
        b'[{"jobId":"j","type":"stage_completed","data":{"stage":"A","nextStage":"B","timestamp":"2020-01-01T00:00:00.000Z"}},'
        b'{"jobId":"j","type":"job_error","data":{"error":"Stage execution failed","stage":"B"}}]'
    )
    assert [e.type for e in events] == ["stage_completed", "job_error"]
    assert json.loads(encode_job_event(events[0], 1, 0))["data"]["timestamp"] == "2020-01-01T00:00:00.000Z"


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"{", "not valid JSON"),
        (b"[]", "no event"),
        (b'{"jobId":"j","type":"other"}', '"type" must be one of'),
        (b'{"jobId":"job-1\\n","type":"job_status","data":{"status":"OK"}}', '"jobId"'),
        (b'{"jobId":"j","type":"job_status","data":{}}', '"data.status"'),
        (b'{"jobId":"j","type":"job_status","data":[]}', '"data" must be'),
        (b'[{"jobId":"j","type":"job_status","data":{"status":"OK"}},{"type":"job_status"}]', "event 1:"),
    ],
)
def test_bad_publish_bodies(body, fragment):
    with pytest.raises(ProtocolError) as info:
        decode_publish(body)
    assert fragment in info.value.message


def test_error_and_established_messages():
    err = json.loads(error_message(ErrorCode.UNAUTHORIZED, "Authentication failed"))
    assert err["type"] == "error" and err["code"] == "UNAUTHORIZED" and err["message"] == "Authentication failed"
    assert err["timestamp"].endswith("Z")
    est = json.loads(connection_established("client-456", "42", 30000))
    assert list(est) == ["type", "clientId", "userId", "timestamp", "heartbeatInterval"]
    assert est["heartbeatInterval"] == 30000


def test_event_size_is_bounded_exactly_as_sent():
    from broker.protocols import check_event_size

    body = json.dumps({"jobId": "job-1", "type": "job_status", "data": {"status": "RUNNING", "log": "é" * 1000}})
    (event,) = decode_publish(body.encode())
    worst = len(encode_job_event(event, 2**63 - 1, 0))
    assert len(encode_job_event(event, 1, 1766393187.5)) <= worst
    assert decode_publish(body.encode(), max_event_bytes=worst) == [event]
    with pytest.raises(ProtocolError) as info:
        decode_publish(body.encode(), max_event_bytes=worst - 1)
    assert info.value.code is ErrorCode.MESSAGE_TOO_BIG and str(worst - 1) in info.value.message
    with pytest.raises(ProtocolError):
        check_event_size(event, worst - 1)
    # a publisher's own timestamp is sent as given: counted as given
    (stamped,) = decode_publish(json.dumps({"jobId": "j", "type": "job_status",
                                            "data": {"status": "x", "timestamp": "t" * 500}}).encode())
    assert len(encode_job_event(stamped, 2**63 - 1, 0)) > 500
