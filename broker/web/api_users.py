"""Server API routes of users: where a user is connected, disconnecting it on every
node, banning it for a while and lifting the ban (docs/PROTOCOL.md section 8.3)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..protocols import CloseCode
from .routes import Answer, ApiRequest, ApiResponse, Route, json_response
from .schema import USER_ID, obj

if TYPE_CHECKING:
    from ..cluster.control import Control

BAN_SECONDS_MAX = 366 * 24 * 3600
DEFAULT_REASON = "disconnected by the application"
CLOSE_REASON_BYTES = 120  # a close frame's reason is at most 123 bytes

USER = obj({
    "userId": {"type": "string"}, "online": {"type": "boolean"},
    "connections": {"type": "integer", "minimum": 0, "description": "on every live node"},
    "nodes": {"type": "array", "items": {"type": "string"}},
    "banned": {"type": "boolean", "description": "new connections of this user are refused now"},
}, ("userId", "online", "connections", "nodes", "banned"), closed=False)
DISCONNECT = obj({
    "code": {"type": "integer", "minimum": 4000, "maximum": 4999, "default": int(CloseCode.DISCONNECTED),
             "description": "the close code (4009: disconnected by the application; the client does not "
                            "reconnect by itself)"},
    "reason": {"type": "string", "maxLength": 100, "description": "the close reason (cut to 120 UTF-8 bytes)"},
    "banSeconds": {"type": "number", "minimum": 1, "maximum": BAN_SECONDS_MAX,
                   "description": "also refuse this user's new connections (403 / 1008) for this long, everywhere"},
})
DISCONNECTED = obj({
    "userId": {"type": "string"}, "code": {"type": "integer"},
    "connections": {"type": "integer", "minimum": 0, "description": "connections the user had, now being closed"},
    "nodes": {"type": "array", "items": {"type": "string"}},
    "bannedForSeconds": {"type": ["number", "null"]},
}, ("userId", "code", "connections", "nodes", "bannedForSeconds"), closed=False)
LIFTED = obj({"userId": {"type": "string"}, "lifted": {"type": "boolean", "description": "false: there was no ban"}},
             ("userId", "lifted"), closed=False)
_UNAVAILABLE = Answer("the cluster could not be reached (Redis): retry")


class UserRoutes:
    """``/users/{userId}...`` under the API prefix (its groups are in :mod:`.api_chat`)."""

    def __init__(self, prefix: str, control: Control) -> None:
        self.prefix = prefix
        self.control = control

    def routes(self) -> list[Route]:
        user = {"userId": USER_ID}
        base = f"{self.prefix}/users/{{userId}}"
        return [
            Route("GET", base, self.get_user, "getUser", "Whether a user is connected, and where", {
                200: Answer("the user's connections on every live node", USER), 503: _UNAVAILABLE},
                params=user, tag="users"),
            Route("POST", f"{base}/disconnect", self.disconnect, "disconnectUser",
                  "Close every connection of a user on every node; optionally ban it for a while", {
                      200: Answer("the connections are being closed", DISCONNECTED), 503: _UNAVAILABLE},
                  params=user, body=DISCONNECT, body_required=False, tag="users"),
            Route("DELETE", f"{base}/ban", self.lift_ban, "liftUserBan", "End a user's ban on every node", {
                200: Answer("the ban is over (or there was none)", LIFTED), 503: _UNAVAILABLE},
                params=user, tag="users"),
        ]

    async def get_user(self, request: ApiRequest) -> ApiResponse:
        user_id = request.params["userId"]
        found = await self.control.user_connections(user_id)
        return json_response(200, {"userId": user_id, "online": found.connections > 0,
                                   "connections": found.connections, "nodes": found.nodes,
                                   "banned": self.control.banned(user_id)})

    async def disconnect(self, request: ApiRequest) -> ApiResponse:
        user_id = request.params["userId"]
        body: dict[str, Any] = request.body or {}
        code = body.get("code", int(CloseCode.DISCONNECTED))
        reason = _close_reason(body.get("reason") or DEFAULT_REASON)
        ban = body.get("banSeconds")
        found = await self.control.user_connections(user_id)
        await self.control.disconnect_user(user_id, code, reason, ban)
        return json_response(200, {"userId": user_id, "code": code, "connections": found.connections,
                                   "nodes": found.nodes, "bannedForSeconds": ban})

    async def lift_ban(self, request: ApiRequest) -> ApiResponse:
        user_id = request.params["userId"]
        return json_response(200, {"userId": user_id, "lifted": await self.control.lift_ban(user_id)})


def _close_reason(reason: str) -> str:
    """``reason`` cut to CLOSE_REASON_BYTES of UTF-8, never inside a character."""
    return reason.encode("utf-8")[:CLOSE_REASON_BYTES].decode("utf-8", "ignore")
