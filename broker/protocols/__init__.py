"""Sans-I/O protocol layer: codes, the WebSocket upgrade check, server frames, JSON messages.

Nothing here imports trio or touches a socket (h11 and wsproto are the model).
"""

from .chat import ChatSend, HistoryRequest, ReadReport
from .codes import CloseCode, ErrorCode, ProtocolError
from .decode import Limits, decode_client_message
from .expiry import format_expiry, left_forbidden_message, token_expiring_message, token_refreshed_message
from .frames import binary_frame, close_frame, encode_frame, ping_frame, text_frame
from .handshake import HandshakeError, UpgradeRequest, accept_key, validate_upgrade, wants_websocket
from .messages import (
    Auth,
    ClientCommand,
    JobEvent,
    JobEventParts,
    JoinJob,
    LeaveJob,
    Ping,
    check_event_size,
    connection_established,
    decode_json_object,
    decode_publish,
    encode,
    encode_job_event,
    error_message,
    format_timestamp,
    job_event_parts,
    joined_message,
    left_message,
    pong_message,
    timestamp_now,
)
from .presence import PresenceRequest, presence_change, presence_message

__all__ = [
    "Auth",
    "ChatSend",
    "HistoryRequest",
    "Limits",
    "ReadReport",
    "ClientCommand",
    "CloseCode",
    "ErrorCode",
    "HandshakeError",
    "JobEvent",
    "JobEventParts",
    "JoinJob",
    "LeaveJob",
    "Ping",
    "PresenceRequest",
    "ProtocolError",
    "binary_frame",
    "check_event_size",
    "close_frame",
    "connection_established",
    "decode_client_message",
    "decode_json_object",
    "decode_publish",
    "encode",
    "encode_frame",
    "encode_job_event",
    "error_message",
    "format_timestamp",
    "job_event_parts",
    "joined_message",
    "left_message",
    "ping_frame",
    "pong_message",
    "presence_change",
    "presence_message",
    "text_frame",
    "UpgradeRequest",
    "accept_key",
    "validate_upgrade",
    "wants_websocket",
    "format_expiry",
    "left_forbidden_message",
    "token_expiring_message",
    "token_refreshed_message",
    "timestamp_now",
]
