"""Close codes and error codes of the wire contract (docs/PROTOCOL.md section 6)."""

from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down or restarting: reconnect with backoff
    POLICY = 1008  # authentication failed / policy violation: stop, get a new token
    TOO_BIG = 1009  # frame larger than the configured limit
    INTERNAL = 1011  # internal error: reconnect with backoff
    TRY_AGAIN_LATER = 1013  # a shared service (the cluster backplane) is unreachable: reconnect with backoff
    REPLACED = 4001  # replaced by a newer login of the same user
    HEARTBEAT_TIMEOUT = 4002
    SLOW_CONSUMER = 4003  # outbound queue overflowed: resume with lastSeq
    UPSTREAM_UNAVAILABLE = 4004  # proxy routes
    TOKEN_EXPIRED = 4005  # token expired without a refresh: get a new token, then reconnect
    RATE_LIMITED = 4008  # rate limit exceeded repeatedly
    DISCONNECTED = 4009  # disconnected by the application (server API): do not reconnect by yourself


class ErrorCode(str, enum.Enum):  # noqa: UP042 (StrEnum would change what str() and format() give)
    BAD_REQUEST = "BAD_REQUEST"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    RATE_LIMITED = "RATE_LIMITED"
    MESSAGE_TOO_BIG = "MESSAGE_TOO_BIG"
    HISTORY_GAP = "HISTORY_GAP"
    REPLACED = "REPLACED"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"


class ProtocolError(Exception):
    """Bad input from a peer: answered with an error message, the connection stays usable."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
