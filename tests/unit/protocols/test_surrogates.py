"""Every decoder refuses strings that are not Unicode scalar values, and user ids with
control, line-break or bidi characters (issue 20, section 3), at the protocol layer:
property tests with a lone surrogate put anywhere in otherwise valid input."""

import json
import time
import unicodedata
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.auth.tokens import Authenticator, AuthError
from broker.config.loader import AuthConfig
from broker.protocols import ErrorCode, ProtocolError, decode_client_message, decode_json_object, decode_publish
from broker.protocols.text import has_lone_surrogate, is_user_id, loads_json

SECRET = "test-secret-0123456789abcdef-0123456789"

# Valid client frames (one per decoder path), each accepted as it is.
CLIENT_FRAMES: list[dict[str, Any]] = [
    {"type": "auth", "token": "abc.def.ghi"},
    {"type": "ping"},
    {"type": "join_job", "jobId": "job-1", "lastSeq": 3, "lastEpoch": "e1", "presence": True},
    {"type": "leave_job", "jobId": "job-1"},
    {"chatType": 1, "conversationId": "team", "content": "hi", "clientMsgId": "c1"},
    {"chatType": 2, "recvId": "bob", "content": "hello", "contentType": 1},
    {"type": "history", "conversationId": "team", "limit": 10},
    {"type": "read", "conversationId": "p:3:bob:carol", "msgId": 5},
    {"type": "presence", "conversationId": "team"},
    {"type": "presence", "jobId": "job-1"},
]
PUBLISH_BODIES: list[Any] = [
    {"jobId": "job-1", "type": "job_status", "data": {"status": "running", "detail": {"step": ["a", "b"]}}},
    [{"jobId": "job-1", "type": "stage_completed", "data": {"stage": "build"}, "idempotencyKey": "k1"},
     {"jobId": "job-2", "type": "job_error", "data": {"error": "boom"}}],
]

json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8))
json_values = st.recursive(
    json_leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
lone_surrogates = st.integers(0xD800, 0xDFFF).map(chr)


def _string_slots(value: Any, path: tuple = ()) -> list[tuple]:
    """Paths to every string of ``value``: ("key", path, key) or ("value", path)."""
    slots: list[tuple] = []
    if isinstance(value, str):
        slots.append(("value", path))
    elif isinstance(value, dict):
        for key, item in value.items():
            slots.append(("key", path, key))
            slots += _string_slots(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            slots += _string_slots(item, (*path, index))
    return slots


def _with_surrogate(value: Any, slot: tuple, surrogate: str, where: int) -> Any:
    """A copy of ``value`` with ``surrogate`` inserted into the string at ``slot``."""
    def insert(text: str) -> str:
        at = where % (len(text) + 1)
        return text[:at] + surrogate + text[at:]

    def rebuild(node: Any, path: tuple) -> Any:
        if not path:
            if slot[0] == "value":
                return insert(node)
            return {(insert(k) if k == slot[2] else k): v for k, v in node.items()}
        head, rest = path[0], path[1:]
        if isinstance(node, dict):
            return {k: (rebuild(v, rest) if k == head else v) for k, v in node.items()}
        return [rebuild(v, rest) if i == head else v for i, v in enumerate(node)]

    return rebuild(value, slot[1])


@st.composite
def tainted(draw, templates: list[Any]) -> Any:
    """A valid template, maybe with a random extra field, holding one lone surrogate in
    one of its strings (a key or a value, at any depth)."""
    value = json.loads(json.dumps(draw(st.sampled_from(templates))))
    if draw(st.booleans()):
        target = value if isinstance(value, dict) else value[0]
        target["extra"] = draw(json_values)
    slots = _string_slots(value)
    slot = draw(st.sampled_from(slots))
    return _with_surrogate(value, slot, draw(lone_surrogates), draw(st.integers(0, 50)))


def test_the_templates_are_accepted_as_they_are():
    for frame in CLIENT_FRAMES:
        decode_client_message(json.dumps(frame))
    for body in PUBLISH_BODIES:
        decode_publish(json.dumps(body).encode())


@settings(max_examples=300)
@given(frame=tainted(CLIENT_FRAMES), escaped=st.booleans())
def test_client_frames_with_a_lone_surrogate_are_bad_requests(frame, escaped):
    """As a JSON escape (what a client sends) or as the character itself in the str."""
    text = json.dumps(frame, ensure_ascii=escaped)
    with pytest.raises(ProtocolError) as info:
        decode_client_message(text)
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert "surrogate" in info.value.message
    info.value.message.encode("utf-8")  # the answer itself can be sent


@settings(max_examples=200)
@given(body=tainted(PUBLISH_BODIES))
def test_publish_bodies_with_a_lone_surrogate_are_bad_requests(body):
    with pytest.raises(ProtocolError) as info:
        decode_publish(json.dumps(body).encode("ascii"))
    assert info.value.code is ErrorCode.BAD_REQUEST and "surrogate" in info.value.message
    # the raw character cannot be UTF-8: sent as bytes it is invalid UTF-8, refused as such
    with pytest.raises(ProtocolError) as info:
        decode_publish(json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    assert info.value.code is ErrorCode.BAD_REQUEST


@settings(max_examples=200)
@given(body=tainted([{"groupId": "team", "name": "Team", "members": ["alice", "bob"]}]))
def test_http_json_bodies_with_a_lone_surrogate_are_bad_requests(body):
    with pytest.raises(ProtocolError) as info:
        decode_json_object(json.dumps(body).encode("ascii"), "body")
    assert info.value.code is ErrorCode.BAD_REQUEST and "surrogate" in info.value.message


@settings(max_examples=100, deadline=None)
@given(claims=tainted([{"sub": "alice", "jobs": ["job-*"], "name": "Alice", "roles": {"admin": False}}]))
def test_jwt_claims_with_a_lone_surrogate_are_refused(claims):
    claims["exp"] = int(time.time()) + 3600
    token = jwt.encode(claims, SECRET, algorithm="HS256")  # json.dumps escapes it: a valid, signed JWT
    with pytest.raises(AuthError):
        Authenticator(AuthConfig(jwt_secret=SECRET)).authenticate(token)


@given(value=json_values)
def test_valid_json_passes_and_surrogate_pairs_are_one_character(value):
    assert loads_json(json.dumps(value)) == value
    assert loads_json('["\\ud83d\\ude00"]') == ["\U0001f600"]
    assert not has_lone_surrogate(value)


@given(text=st.text(min_size=1, max_size=20), bad=st.characters(categories=["Cc", "Cf", "Cs", "Zl", "Zp"]),
       where=st.integers(0, 20))
def test_user_ids_refuse_control_format_and_separator_characters(text, bad, where):
    at = where % (len(text) + 1)
    assert not is_user_id(text[:at] + bad + text[at:])
    clean = "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zl", "Zp")).strip()
    assert is_user_id(clean) == (0 < len(clean) <= 128)


@pytest.mark.parametrize("user", ["a\nb", "a\x00b", "\u202eevil", "a\u200fb", "x\u2028y", "a\tb", "\ud800"])
def test_recv_ids_and_jwt_subjects_with_such_characters_are_refused(user):
    frame = json.dumps({"chatType": 2, "recvId": user, "content": "hi"})
    with pytest.raises(ProtocolError) as info:
        decode_client_message(frame)
    assert info.value.code is ErrorCode.BAD_REQUEST
    token = jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError):
        Authenticator(AuthConfig(jwt_secret=SECRET)).authenticate(token)


def test_user_ids_of_every_script_are_kept():
    for user in ["alice", "José Müller", "王小明", "user@example.com", "😀 fan", "a b"]:
        assert is_user_id(user), user
