"""A small actor runtime on trio: bounded typed mailboxes, one-shot replies, and
supervisors that spawn, stop and restart actors under nurseries.

Knows nothing of WebSockets or brokers.
"""

from .mailbox import Mailbox, MailboxClosed, MailboxFull, MailboxStats
from .reply import Reply
from .supervisor import (
    ChildGaveUp,
    ChildHandle,
    ChildState,
    Restart,
    RestartIntensity,
    Supervisor,
    open_supervisor,
)

__all__ = [
    "ChildGaveUp",
    "ChildHandle",
    "ChildState",
    "Mailbox",
    "MailboxClosed",
    "MailboxFull",
    "MailboxStats",
    "Reply",
    "Restart",
    "RestartIntensity",
    "Supervisor",
    "open_supervisor",
]
