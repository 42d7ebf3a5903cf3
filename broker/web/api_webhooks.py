"""Server API routes of webhooks' dead letters (docs/PROTOCOL.md section 9.3): list
them, and send one again with its webhook-id. A broker without ``[[webhook]]`` has
no such routes (the admin page then says it has no webhook sender)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .routes import Answer, ApiRequest, ApiResponse, Route, error_response, json_response
from .schema import obj

if TYPE_CHECKING:
    from ..webhooks import Outbox

FAILED_LIMIT_MAX = 1000

DEAD_LETTER = obj({
    "id": {"type": "integer", "description": "the dead letter's id, for .../retry"},
    "endpoint": {"type": "string", "description": "the [[webhook]] name (its url when it has none)"},
    "key": {"type": "string", "description": "what it is ordered with: user:<id>, conversation:<id>, job:<id>"},
    "webhookId": {"type": "string"}, "type": {"type": "string"},
    "createdAt": {"type": "number", "description": "Unix seconds it was recorded (or last re-sent)"},
    "attempts": {"type": "integer"}, "lastError": {"type": "string"},
}, ("id", "endpoint", "key", "webhookId", "type", "createdAt", "attempts", "lastError"), closed=False)
FAILED_PAGE = obj({
    "failed": {"type": "array", "items": DEAD_LETTER, "description": "oldest first"},
    "dead": {"type": "integer", "description": "dead letters in all, as of the sender's last count"},
}, ("failed", "dead"), closed=False)
RESENT = obj({"id": {"type": "integer"}, "status": {"const": "pending"}}, ("id", "status"), closed=False)
_UNAVAILABLE = Answer("the store could not be read: retry")


class WebhookRoutes:
    """``/webhooks/failed...`` under the API prefix."""

    def __init__(self, prefix: str, outbox: Outbox | None) -> None:
        self.prefix = prefix
        self.outbox = outbox

    def routes(self) -> list[Route]:
        return [
            Route("GET", f"{self.prefix}/webhooks/failed", self.list_failed, "listWebhookDeadLetters",
                  "Webhook events dead-lettered (refused, or past [webhooks] max_age), oldest first", {
                      200: Answer("a page of dead letters after `after`", FAILED_PAGE), 503: _UNAVAILABLE},
                  tag="webhooks",
                  query={"after": {"type": "integer", "minimum": 0, "maximum": 2**62, "default": 0},
                         "limit": {"type": "integer", "minimum": 1, "maximum": FAILED_LIMIT_MAX, "default": 100}}),
            Route("POST", f"{self.prefix}/webhooks/failed/{{id}}/retry", self.retry, "retryWebhookDeadLetter",
                  "Send a dead letter again, with its webhook-id", {
                      200: Answer("pending again; max_age counts from now", RESENT),
                      404: Answer("no dead letter with this id"), 503: _UNAVAILABLE},
                  params={"id": {"type": "string", "pattern": "^[0-9]{1,18}$"}}, body_required=False,
                  tag="webhooks"),
        ]

    async def list_failed(self, request: ApiRequest) -> ApiResponse:
        if self.outbox is None:
            return json_response(200, {"failed": [], "dead": 0})
        failed = await self.outbox.dead_letters(request.query["after"], request.query["limit"])
        return json_response(200, {"failed": failed, "dead": self.outbox.dead_total()})

    async def retry(self, request: ApiRequest) -> ApiResponse:
        raw = request.params["id"]
        if not raw.isdigit() or len(raw) > 18 or self.outbox is None or not await self.outbox.resend(int(raw)):
            return error_response(404, f"no dead letter {raw[:20]}")
        return json_response(200, {"id": int(raw), "status": "pending"})
