"""How the server's processes write their logs: to stderr and to a file rotated by
size, as text lines or as JSON lines (one object a line, for log collectors)."""

from __future__ import annotations

import json
import logging
import logging.handlers
from datetime import UTC, datetime
from pathlib import Path

from minigit.config import LogSettings

# Fields a log call may add with ``extra=`` (the request log does), copied into JSON lines.
STRUCTURED_FIELDS = ("user", "action", "repo", "status", "detail", "partition", "ms")


class JsonLineFormatter(logging.Formatter):
    """One JSON object a line: time (ISO 8601, UTC), level, replica (when the
    process is one), logger, message, the structured fields the call gave, and
    ``exc`` with the traceback of an exception. ASCII only, so that no character
    of a message (a newline, U+2028) can split the line."""

    def __init__(self, replica: str | None) -> None:
        super().__init__()
        self.replica = replica

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
        }
        if self.replica is not None:
            entry["replica"] = self.replica
        entry["logger"] = record.name
        entry["message"] = record.getMessage()
        for name in STRUCTURED_FIELDS:
            if name in record.__dict__:
                entry[name] = record.__dict__[name]
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=True, default=str)


def formatter_for(settings: LogSettings, who: str, replica: str | None) -> logging.Formatter:
    """``who`` names the process in text lines (``replica-2``, ``supervisor``)."""
    if settings.format == "json":
        return JsonLineFormatter(replica)
    return logging.Formatter(f"%(asctime)s {who} %(levelname)s %(message)s")


def log_handlers(settings: LogSettings, log_file: Path, formatter: logging.Formatter) -> list[logging.Handler]:
    """stderr and ``log_file``, which rolls over to ``log_file.1`` … at ``max_bytes``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [
        logging.StreamHandler(),
        logging.handlers.RotatingFileHandler(
            log_file, maxBytes=settings.max_bytes, backupCount=settings.backups, encoding="utf-8"
        ),
    ]
    for handler in handlers:
        handler.setFormatter(formatter)
    return handlers
