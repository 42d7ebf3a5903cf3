"""Keeping secrets out of logs: tokens, API keys and bearer credentials become ``***``.

Code never logs a token on purpose; :class:`RedactingFilter` is the second line of
defence, applied to every record of the broker's loggers.
"""

from __future__ import annotations

import logging
import re

_QUERY_SECRET = re.compile(
    r"(?i)\b(token|access_token|apikey|api_key|api-key|key|secret|password|authorization)=([^&\s\"',;]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+[^\s\"',]+")  # to the next space or quote: a repr'd b'\\x00' too
_JWT = re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")


def redact(text: str) -> str:
    """``text`` with secret-looking values replaced by ``***``."""
    text = _QUERY_SECRET.sub(lambda m: f"{m.group(1)}=***", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} ***", text)
    return _JWT.sub("***", text)


_FORMATTER = logging.Formatter()


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with secrets redacted (args are folded in first),
    and its traceback and stack text too: an exception's message may quote a header
    or URL. The traceback is formatted here, redacted, and stored as ``exc_text``
    (what ``logging.Formatter`` prints); ``exc_info`` is then dropped so that no
    handler formats the raw exception again."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string is not ours to fix here
            message = None
        if message is not None:
            cleaned = redact(message)
            if cleaned != message or record.args:
                record.msg, record.args = cleaned, None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = _FORMATTER.formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def configure_logging(level: str) -> None:
    """Plain-text logs on stderr, redacted, at ``level`` (for ``broker serve``)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # third-party chatter at DEBUG would include raw frames
    logging.getLogger("trio-websocket").setLevel(max(logging.INFO, logging.getLevelName(level)))


def install_filter(logger_names: tuple[str, ...] = ("broker", "actors", "trio-websocket", "")) -> None:
    """Attach the filter to the named loggers and their existing descendants (embedding:
    keep the host's handlers). A logger's filter sees only records logged to it, not
    those propagated from children, so ``broker.connection`` needs its own: every
    module creates its logger at import, before the broker starts and calls this."""
    existing = [name for name, logger in list(logging.Logger.manager.loggerDict.items())
                if isinstance(logger, logging.Logger)]
    for prefix in logger_names:
        names = {prefix} | {name for name in existing if prefix and name.startswith(prefix + ".")}
        for name in names:
            logger = logging.getLogger(name)
            if not any(isinstance(f, RedactingFilter) for f in logger.filters):
                logger.addFilter(RedactingFilter())
