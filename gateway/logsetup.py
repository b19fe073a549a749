"""Logging to stderr, shaped for journald when systemd runs us.

Under systemd (JOURNAL_STREAM is set) each line starts with a `<N>` syslog priority that
journald turns into the entry's level, and carries no timestamp (journald adds its own).
"""

from __future__ import annotations

import logging
import os
import sys

from core.redact import redact

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _RedactingFormatter(logging.Formatter):
    """Every line, traceback included, through the one redaction step (core.redact)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _JournalFormatter(_RedactingFormatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{super().format(record)}"


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            _RedactingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter (pymodbus logs every reconnect attempt) stays below our own messages.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
