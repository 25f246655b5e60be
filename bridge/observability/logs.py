"""Logging set-up for the bridge's processes: text or JSON lines, credentials masked.

Every line the bridge writes goes through `RedactingFormatter`, which masks credentials
by their shape in the whole formatted line, tracebacks included: bearer credentials and
bridge client keys (`bridge.core.redaction`), `sk-…` keys and key-like JSON fields. Known
secrets (the upstream key of shared mode) are removed by `bridge.core.redaction`'s filter.
`--log-format json` writes one JSON object per line, with the structured fields of
access lines as keys of their own.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, Mapping

from bridge.core.redaction import REDACTED, Redactor
from bridge.core.settings import Settings

FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"

# Headers whose values are credentials: never logged.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key",
                            "cookie", "set-cookie"})

_SHAPES = Redactor(())  # no known secret: bearer credentials and client keys, by shape
_PATTERNS = [
    (re.compile(r"\bsk-[A-Za-z0-9_-]{4,}"), "sk-" + REDACTED),
    (re.compile(r'(?i)("(?:api[_-]?key|authorization|password|secret|access_token)"\s*:\s*)'
                r'"(?:[^"\\]|\\.)*"'), r'\1"' + REDACTED + '"'),
]


# What every shape above starts with, case-folded: a line without any of these (most
# lines, every ordinary access line) has nothing to mask, which one pass finds out.
_MARKERS = ("sk-", "bearer", '"api', '"authorization"', '"password"', '"secret"',
            '"access_token"')


def redact(text: str) -> str:
    """`text` with every credential recognisable by its shape masked."""
    folded = text.casefold()
    if not any(marker in folded for marker in _MARKERS):
        return text
    text = _SHAPES.log_text(text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def safe_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers for a log line: credential headers' values replaced."""
    return {name: REDACTED if name.lower() in SECRET_HEADERS else value
            for name, value in headers.items()}


def clip(data: bytes | str, limit: int = 2000) -> str:
    """A body for a log line: decoded, cut to `limit` characters, with the cut said."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if len(text) > limit:
        return f"{text[:limit]}… [{len(text) - limit} more characters]"
    return text


class RedactingFormatter(logging.Formatter):
    """Plain text lines, with credentials removed from the whole line."""

    _second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """As logging's, with the date and time formatted once per second."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if self._second[0] != second:
            self._second = (second, time.strftime(self.default_time_format,
                                                  self.converter(record.created)))
        return self.default_msec_format % (self._second[1], record.msecs)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(RedactingFormatter):
    """One JSON object per line: time, level, logger, pid, message, and the record's
    structured `fields` (access lines) as keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": redact(record.getMessage()),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        # redacted before and after encoding: JSON escapes the quotes the patterns look for
        return redact(json.dumps(line, ensure_ascii=False, default=str))


def configure(settings: Settings) -> None:
    """Route the bridge's loggers to stderr at INFO (DEBUG with `-d`); idempotent."""
    root = logging.getLogger("bridge")
    root.setLevel(logging.DEBUG if settings.debug else logging.INFO)
    formatter = (JsonFormatter() if getattr(settings, "log_format", "text") == "json"
                 else RedactingFormatter(FORMAT))
    handler = next((h for h in root.handlers if getattr(h, "_bridge", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._bridge = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    handler.setFormatter(formatter)


def gunicorn_logconfig(settings: Settings) -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: with `--log-format json` its own lines (master and
    workers) are JSON too, and its access log stays off (the bridge writes its own); {}
    keeps gunicorn's default."""
    if settings.log_format != "json":
        return {}
    return {
        "root": {"level": "INFO", "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {"level": "DEBUG" if settings.debug else "INFO",
                               "handlers": ["json"], "propagate": False,
                               "qualname": "gunicorn.error"},
            "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False,
                                "qualname": "gunicorn.access"},
        },
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json",
                              "stream": "ext://sys.stderr"}},
        "formatters": {"json": {"()": JsonFormatter}},
    }
