"""Token expiry and in-band refresh (docs/PROTOCOL.md section 2, extension): the frames
the broker sends about a connection's credentials. Pure: no trio, no sockets.

``token_expiring`` goes out ``[auth] refresh_before`` seconds before the token's ``exp``
(at most half of what is left of it); the client answers ``{"type":"auth","token":...}``
on the same connection, answered ``token_refreshed`` (and ``left`` with FORBIDDEN for a
job the new token no longer allows). Without a valid refresh by ``exp + jwt_leeway``:
an error TOKEN_EXPIRED, then close 4005.
"""

from __future__ import annotations

from .codes import ErrorCode
from .messages import encode, format_timestamp


def format_expiry(expires_at: float | None) -> str | None:
    """``expiresAt``: Unix seconds as ISO 8601 UTC with milliseconds and Z (None: never)."""
    return None if expires_at is None else format_timestamp(expires_at)


def token_expiring_message(expires_at: float) -> bytes:
    return encode({"type": "token_expiring", "expiresAt": format_timestamp(expires_at)})


def token_refreshed_message(expires_at: float | None) -> bytes:
    return encode({"type": "token_refreshed", "expiresAt": format_expiry(expires_at)})


def left_forbidden_message(job_id: str) -> bytes:
    """A job left because the refreshed credentials no longer allow it."""
    return encode({"type": "left", "jobId": job_id, "code": ErrorCode.FORBIDDEN.value,
                   "message": f"the refreshed token no longer allows job {job_id}"})
