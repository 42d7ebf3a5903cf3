import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.protocols import (
    ChatSend,
    ErrorCode,
    HistoryRequest,
    Limits,
    ProtocolError,
    ReadReport,
    decode_client_message,
)
from broker.protocols.chat import (
    chat_delivery,
    history_response,
    private_conversation_id,
    private_members,
)
from broker.protocols.text import is_user_id


def test_chat_frames_of_the_contract_need_no_type():
    private = decode_client_message('{"conversationId":"","recvId":"123","chatType":2,"content":"你好","contentType":1}')
    assert private == ChatSend(2, "", "123", "你好", 1)
    group = decode_client_message('{"conversationId":"group_001","chatType":1,"content":"大家好","contentType":1}')
    assert group == ChatSend(1, "group_001", None, "大家好", 1)
    assert decode_client_message('{"type":"history","conversationId":"group_001","beforeMsgId":9,"limit":50}') == \
        HistoryRequest("group_001", 9, 50)
    assert decode_client_message('{"type":"read","conversationId":"group_001","msgId":7}') == ReadReport("group_001", 7)


@pytest.mark.parametrize(
    "frame, code, fragment",
    [
        ({"chatType": 3, "content": "x"}, "BAD_REQUEST", "chatType"),
        ({"chatType": 2, "content": "x"}, "BAD_REQUEST", "recvId"),
        ({"chatType": 2, "recvId": "b", "content": ""}, "BAD_REQUEST", "content"),
        ({"chatType": 2, "recvId": "b", "content": "x", "contentType": 9}, "BAD_REQUEST", "contentType"),
        ({"chatType": 2, "recvId": "b", "content": "x" * 5000}, "MESSAGE_TOO_BIG", "4096"),
        ({"chatType": 2, "recvId": "b", "content": "javascript:alert(1)", "contentType": 2}, "BAD_REQUEST", "image"),
        ({"chatType": 2, "recvId": "b", "content": "not a url", "contentType": 2}, "BAD_REQUEST", "image"),
        ({"chatType": 2, "recvId": "b", "content": "data:image/png;base64,AAA", "contentType": 2}, "BAD_REQUEST", "image"),
        ({"chatType": 1, "conversationId": "bad id!", "content": "x"}, "BAD_REQUEST", "group id"),
        ({"type": "history"}, "BAD_REQUEST", "conversationId"),
        ({"type": "history", "conversationId": "g", "limit": 100000}, "BAD_REQUEST", "limit"),
        ({"type": "read", "conversationId": "g", "msgId": 0}, "BAD_REQUEST", "msgId"),
    ],
)
def test_bad_chat_frames(frame, code, fragment):
    with pytest.raises(ProtocolError) as info:
        decode_client_message(json.dumps(frame), Limits(max_content_length=4096))
    assert info.value.code == ErrorCode(code) and fragment in info.value.message


@pytest.mark.parametrize("content", ["https://cdn.example.com/a.png", "oss/bucket/key.png", "file-id:abc123"])
def test_image_references_accepted(content):
    assert decode_client_message(json.dumps({"chatType": 2, "recvId": "b", "content": content, "contentType": 2}))


@pytest.mark.slow
@given(st.text(min_size=1, max_size=20).filter(is_user_id), st.text(min_size=1, max_size=20).filter(is_user_id))
def test_private_conversation_id_is_symmetric_and_reversible(a, b):
    assert private_conversation_id(a, b) == private_conversation_id(b, a)
    assert private_members(private_conversation_id(a, b)) == tuple(sorted((a, b)))


def test_private_ids_of_colon_names_do_not_collide():
    assert private_conversation_id("a:b", "c") != private_conversation_id("a", "b:c")
    assert private_members("group_001") is None and private_members("p:x:a:b") is None


def test_delivery_shape_and_history_splice():
    send = ChatSend(2, "", "bob", "你好", 1)
    delivered = json.loads(chat_delivery(send, "p:3:bob:5:alice", "alice", 42, 1766393187.5))
    assert delivered == {"conversationId": "p:3:bob:5:alice", "sendId": "alice", "recvId": "bob", "chatType": 2,
                         "content": "你好", "contentType": 1, "msgId": 42, "timestamp": "2025-12-22T08:46:27.500Z"}
    assert "type" not in delivered
    page = json.loads(history_response("c", [b'{"msgId":1}', b'{"msgId":2}'], True))
    assert page == {"type": "history", "conversationId": "c", "hasMore": True, "messages": [{"msgId": 1}, {"msgId": 2}]}
    assert json.loads(history_response("c", [], False))["messages"] == []


@pytest.mark.parametrize(
    "frame, fragment",
    [
        ({"chatType": 2.0, "recvId": "b", "content": "x"}, "chatType"),
        ({"chatType": 1.0, "content": "x"}, "chatType"),
        ({"chatType": True, "content": "x"}, "chatType"),
        ({"chatType": 2, "recvId": "b", "content": "x", "contentType": 2.0}, "contentType"),
        ({"chatType": 2, "recvId": "b", "content": "x", "contentType": 1.0}, "contentType"),
        ({"chatType": 2, "recvId": "b", "content": "x", "contentType": True}, "contentType"),
    ],
)
def test_chat_and_content_types_are_integers_not_floats_or_bools(frame, fragment):
    with pytest.raises(ProtocolError) as info:
        decode_client_message(json.dumps(frame))
    assert info.value.code is ErrorCode.BAD_REQUEST and fragment in info.value.message


@pytest.mark.parametrize(
    "conversation",
    [
        "group_001\n",  # a trailing newline once passed the id pattern's $
        "g\n",
        "bad id!",
        "x" * 129,
        "p:5:alice",  # private ids only in the form the broker makes
        "p:3:bob:5:alice",  # not in canonical order
        "p:5:alice:3:bob\n",
        "p:0::bob",
        "p:0005:alice:bob",
    ],
)
def test_history_and_read_refuse_what_is_not_a_conversation_id(conversation):
    for frame in ({"type": "history", "conversationId": conversation},
                  {"type": "read", "conversationId": conversation, "msgId": 1}):
        with pytest.raises(ProtocolError) as info:
            decode_client_message(json.dumps(frame))
        assert info.value.code is ErrorCode.BAD_REQUEST and "conversationId" in info.value.message


def test_history_and_read_accept_every_id_the_broker_hands_out():
    for conversation in ("group_001", "all", private_conversation_id("alice", "bob"),
                         private_conversation_id("a:b", "c d"), private_conversation_id("u" * 128, "v" * 128)):
        assert decode_client_message(json.dumps({"type": "history", "conversationId": conversation})).conversation_id \
            == conversation


@pytest.mark.parametrize("content", ["oss/a.png\n", "file-id:abc\n"])
def test_image_references_match_whole_strings(content):
    with pytest.raises(ProtocolError):
        decode_client_message(json.dumps({"chatType": 2, "recvId": "b", "content": content, "contentType": 2}))


def test_group_send_to_a_private_or_newline_id_is_refused():
    for conversation in ("group_001\n", private_conversation_id("a", "b")):
        with pytest.raises(ProtocolError) as info:
            decode_client_message(json.dumps({"chatType": 1, "conversationId": conversation, "content": "x"}))
        assert "group id" in info.value.message
