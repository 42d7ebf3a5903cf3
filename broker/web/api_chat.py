"""Server API routes of chat: messages sent by the backend (as a user or as
``system``), a conversation's history, and groups (docs/PROTOCOL.md sections 4.6
and 8.4)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..chat.backend import NoSuchConversation, conversation_page, send_as
from ..protocols.chat import SYSTEM_SENDER, decode_chat_send
from ..protocols.messages import encode
from .routes import Answer, ApiRequest, ApiResponse, Route, error_response, json_response
from .schema import CONVERSATION_ID, ID, MSG_ID, USER_ID, obj

if TYPE_CHECKING:
    from ..chat.groups import Groups
    from ..chat.service import Chat

MAX_MEMBERS = 10_000

SEND = obj({
    "sendId": {**USER_ID, "description": f'the sender: a user id, or "{SYSTEM_SENDER}" (a sender no token can be)'},
    "chatType": {"type": "integer", "enum": [1, 2], "description": "1 group, 2 private"},
    "conversationId": {"type": "string", "maxLength": 300,
                       "description": 'group: the group id ("" or "all": everyone online); private: may be ""'},
    "recvId": {**USER_ID, "description": "private: the other user"},
    "content": {"type": "string", "minLength": 1,
                "description": "at most [chat] max_content_length characters (else 413)"},
    "contentType": {"type": "integer", "enum": [1, 2], "description": "1 text, 2 image (an http(s) URL or reference)"},
    "clientMsgId": {"type": "string", "maxLength": 64,
                    "description": "a retry with the same sendId and clientMsgId is acknowledged with the first "
                                   "copy's msgId, not stored again"},
}, ("sendId", "chatType", "content"))
SENT = obj({"msgId": {"type": "integer"}, "conversationId": {"type": "string"}, "clientMsgId": {"type": "string"}},
           ("msgId", "conversationId"), closed=False)
MESSAGE = {"type": "object", "required": ["conversationId", "sendId", "msgId"],
           "properties": {"conversationId": {"type": "string"}, "sendId": {"type": "string"},
                          "msgId": {"type": "integer"}, "content": {"type": "string"}}}
PAGE = obj({"conversationId": {"type": "string"}, "hasMore": {"type": "boolean"},
            "messages": {"type": "array", "items": MESSAGE, "description": "newest first"}},
           ("conversationId", "hasMore", "messages"), closed=False)
MEMBERS = {"type": "array", "items": USER_ID, "maxItems": MAX_MEMBERS}
GROUP_ID = {**ID, "description": 'not "all" and not "p:..." (those are not group ids: 400)'}
GROUP = obj({"groupId": {"type": "string"}, "name": {"type": "string"}, "members": {"type": "array",
                                                                                    "items": {"type": "string"}}},
            ("groupId", "members"), closed=False)
_UNAVAILABLE = Answer("not stored or not read (the store or the conversation is unavailable): retry")


class ChatRoutes:
    """``/chat/messages``, ``/conversations/...``, ``/groups...``, ``/users/{userId}/groups``."""

    def __init__(self, prefix: str, chat: Chat, groups: Groups, max_content_length: int, history_max_limit: int,
                 max_page_bytes: int) -> None:
        self.prefix = prefix
        self.chat = chat  # messages sent by the backend, conversations' history
        self.groups = groups
        self.max_content_length = max_content_length
        self.history_max_limit = history_max_limit
        self.max_page_bytes = max_page_bytes

    def routes(self) -> list[Route]:
        p = self.prefix
        group = {"groupId": GROUP_ID}
        return [
            Route("POST", f"{p}/chat/messages", self.send, "sendChatMessage",
                  "Send a chat message as a user or as system: stored, acknowledged and delivered like any other", {
                      200: Answer("stored (delivered to the recipients online, kept for the others)", SENT),
                      403: Answer("the sender is not a member of that conversation (or it does not exist)"),
                      413: Answer("content longer than [chat] max_content_length, or the message too large"),
                      503: _UNAVAILABLE}, body=SEND, tag="chat"),
            Route("GET", f"{p}/conversations/{{conversationId}}/messages", self.history, "getConversationMessages",
                  "A page of a conversation's messages, newest first", {
                      200: Answer("the messages before `before`", PAGE), 404: Answer("no such group"),
                      503: _UNAVAILABLE},
                  params={"conversationId": CONVERSATION_ID},
                  query={"before": MSG_ID, "limit": {"type": "integer", "minimum": 1,
                                                     "maximum": self.history_max_limit, "default": 50}},
                  tag="chat"),
            Route("POST", f"{p}/groups", self.create_group, "createGroup", "Create a group", {
                201: Answer("created", GROUP), 409: Answer("the group exists already"), 503: _UNAVAILABLE},
                body=obj({"groupId": GROUP_ID, "name": {"type": "string", "maxLength": 200}, "members": MEMBERS},
                         ("groupId",), closed=False), tag="groups"),
            Route("GET", f"{p}/groups/{{groupId}}", self.get_group, "getGroup", "A group and its members", {
                200: Answer("the group", GROUP), 404: Answer("no such group"), 503: _UNAVAILABLE},
                params=group, tag="groups"),
            Route("DELETE", f"{p}/groups/{{groupId}}", self.delete_group, "deleteGroup",
                  "Delete a group and its messages", {
                      200: Answer("deleted", obj({"groupId": {"type": "string"}, "deleted": {"const": True}},
                                                 ("groupId", "deleted"), closed=False)),
                      404: Answer("no such group"), 503: _UNAVAILABLE}, params=group, tag="groups"),
            Route("PUT", f"{p}/groups/{{groupId}}/members", self.add_members, "addGroupMembers", "Add members", {
                200: Answer("the members now", GROUP), 404: Answer("no such group"), 503: _UNAVAILABLE},
                params=group, body=obj({"members": MEMBERS}, ("members",), closed=False), tag="groups"),
            Route("DELETE", f"{p}/groups/{{groupId}}/members/{{userId}}", self.remove_member, "removeGroupMember",
                  "Remove a member", {
                      200: Answer("the members now", GROUP), 404: Answer("no such group"), 503: _UNAVAILABLE},
                  params={**group, "userId": USER_ID}, tag="groups"),
            Route("GET", f"{p}/users/{{userId}}/groups", self.groups_of, "getUserGroups", "The groups a user is in", {
                200: Answer("the groups", obj({"userId": {"type": "string"},
                                                "groups": {"type": "array", "items": {"type": "string"}}},
                                               ("userId", "groups"), closed=False)), 503: _UNAVAILABLE},
                params={"userId": USER_ID}, tag="groups"),
        ]

    async def send(self, request: ApiRequest) -> ApiResponse:
        body: dict[str, Any] = request.body
        message = decode_chat_send(body, self.max_content_length)  # ProtocolError: 400 / 413
        msg_id, conversation_id = await send_as(self.chat, body["sendId"], message)
        answer: dict[str, Any] = {"msgId": msg_id, "conversationId": conversation_id}
        if message.client_msg_id is not None:
            answer["clientMsgId"] = message.client_msg_id
        return json_response(200, answer)

    async def history(self, request: ApiRequest) -> ApiResponse:
        conversation_id = request.params["conversationId"]
        try:
            messages, has_more = await conversation_page(self.chat, conversation_id, request.query.get("before"),
                                                         request.query["limit"], self.max_page_bytes)
        except NoSuchConversation as exc:
            return error_response(404, str(exc))
        head = encode({"conversationId": conversation_id, "hasMore": has_more})
        return ApiResponse(200, head[:-1] + b',"messages":[' + b",".join(messages) + b"]}")

    async def create_group(self, request: ApiRequest) -> ApiResponse:
        body = request.body
        group_id, name = body["groupId"], body.get("name", "")
        members = await self.groups.create_group(group_id, body.get("members", []), name)
        return json_response(201, {"groupId": group_id, "name": name or group_id, "members": members})

    async def get_group(self, request: ApiRequest) -> ApiResponse:
        return json_response(200, await self.groups.group(request.params["groupId"]))

    async def delete_group(self, request: ApiRequest) -> ApiResponse:
        group_id = request.params["groupId"]
        await self.groups.delete_group(group_id)
        return json_response(200, {"groupId": group_id, "deleted": True})

    async def add_members(self, request: ApiRequest) -> ApiResponse:
        group_id = request.params["groupId"]
        members = await self.groups.add_members(group_id, request.body["members"])
        return json_response(200, {"groupId": group_id, "members": members})

    async def remove_member(self, request: ApiRequest) -> ApiResponse:
        group_id = request.params["groupId"]
        members = await self.groups.remove_members(group_id, [request.params["userId"]])
        return json_response(200, {"groupId": group_id, "members": members})

    async def groups_of(self, request: ApiRequest) -> ApiResponse:
        user_id = request.params["userId"]
        return json_response(200, {"userId": user_id, "groups": await self.groups.groups_of(user_id)})
