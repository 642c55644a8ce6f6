"""No credential in a log line: a filter that redacts anything shaped like an API key (``rsk_<id>_<secret>``,
see ``scanner.db.keys``) from a record's message, arguments, traceback and stack, installed on every handler of
a server process's loggers.  The key's id is kept (it is not secret, and says which key was involved)."""

from __future__ import annotations

import logging
import re

from scanner.db.keys import PREFIX

# The prefix, the id when there is one, then everything up to a space or a quote: a key followed by a control
# byte shows up in a repr as ``rsk_<id>_<secret>\x01'``, and over-redacting a fragment costs nothing.
KEY_LIKE = re.compile(rf"{PREFIX}_(?:([0-9a-f]{{12}})_)?[^\s'\"<>]*")
_FORMATTER = logging.Formatter()


def redact(text: str) -> str:
    return KEY_LIKE.sub(lambda match: f"{PREFIX}_{match.group(1) + '_' if match.group(1) else ''}***", text)


class RedactKeys(logging.Filter):
    """Rewrites the record in place (message formatted, traceback rendered), so that every handler after this
    one, and every formatter, sees only the redacted text; the exception object itself is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not turn logging into a crash
            message = str(record.msg)
        if record.exc_info and not record.exc_text:
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        record.exc_info = None
        record.msg, record.args = redact(message), ()
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install() -> int:
    """Add the filter to every handler of every logger that exists now (the root's, aiohttp's, Celery's); call
    it once logging is configured.  Returns how many handlers received it."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    added = 0
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):  # placeholders in loggerDict have no handlers
            if not any(isinstance(f, RedactKeys) for f in handler.filters):
                handler.addFilter(RedactKeys())
                added += 1
    return added
