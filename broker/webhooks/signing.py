"""Standard Webhooks signatures (https://www.standardwebhooks.com), pure functions.

A request carries ``webhook-id`` (the event's id: the same on every retry),
``webhook-timestamp`` (seconds since the epoch, of this attempt) and
``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` for each
secret, space-separated, so a receiver verifies with either while secrets rotate.
A secret is ``whsec_<base64 of the key bytes>``. Receivers use an existing verifier,
e.g. the ``standardwebhooks`` package: ``Webhook(secret).verify(body, headers)``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The key bytes of a ``whsec_<base64>`` secret. Raises ValueError (without the secret)."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    try:
        return base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except ValueError:
        raise ValueError("a webhook secret is whsec_ followed by base64") from None


def signature(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of ``body`` for ``key``."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def signed_headers(keys: Sequence[bytes], webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt, signed with every key."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(key, webhook_id, timestamp, body) for key in keys),
    }
