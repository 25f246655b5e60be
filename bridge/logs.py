"""Logging set-up for the bridge's processes: text or JSON lines, secrets always redacted.

Every line the bridge writes goes through `RedactingFormatter`, which removes
credentials (`Bearer …`, `sk-…` keys, key-like JSON fields, and any secret registered
with `register_secret`) from the whole formatted line, tracebacks included: a key never
reaches a log, whatever the message. `--log-format json` writes one JSON object per
line, with the structured fields of access lines as keys of their own.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, Mapping

from bridge.settings import Settings

FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
REDACTED = "[redacted]"

# Headers whose values are credentials: never logged.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key",
                            "cookie", "set-cookie"})

_PATTERNS = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=:-]+"), r"\1 " + REDACTED),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{4,}"), "sk-" + REDACTED),
    (re.compile(r'(?i)("(?:api[_-]?key|authorization|password|secret|access_token)"\s*:\s*)'
                r'"(?:[^"\\]|\\.)*"'), r'\1"' + REDACTED + '"'),
]
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Make sure `value` (an upstream or client key) never appears in a log line."""
    if value and len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    """`text` with every credential it contains replaced by `[redacted]`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
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
    register_secret(getattr(settings, "api_key", None))
