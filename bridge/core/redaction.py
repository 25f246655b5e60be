"""Keeping secrets out of what the bridge writes: log records, response bodies, frames.

A `Redactor` replaces known secrets (the upstream key, as it is and as JSON escapes it)
with `[REDACTED]`. Its log filter also masks any `Bearer …` credential and any bridge
client key, so a debug log of headers never carries a key, whoever logs it.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Iterable, Iterator

from bridge.core.exchange import Frame

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 8
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s'\",;\\]+")
_CLIENT_KEY = re.compile(r"sk-bridge-[A-Za-z0-9_\-]{8,}")
_LOGGERS = ("", "bridge", "gunicorn.error", "gunicorn.access")


class Redactor:
    """Replaces the given secrets in text and bytes."""

    def __init__(self, secrets: Iterable[str]):
        forms: set[str] = set()
        for secret in secrets:
            # a very short "key" would be cut out of ordinary answer text: leave it
            if len(secret) >= MIN_SECRET_LENGTH:
                forms.update((secret, json.dumps(secret)[1:-1]))
        # longest first, so a secret that contains another is replaced whole
        self._text = sorted(forms, key=len, reverse=True)
        self._bytes = [form.encode() for form in self._text]
        self.longest = max((len(form) for form in self._bytes), default=0)

    def bytes(self, data: bytes) -> bytes:
        for secret in self._bytes:
            if secret in data:
                data = data.replace(secret, REDACTED.encode())
        return data

    def text(self, text: str) -> str:
        for secret in self._text:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def log_text(self, text: str) -> str:
        """`text` with the secrets, bearer credentials and client keys masked."""
        text = self.text(text)
        if "sk-bridge-" in text:
            text = _CLIENT_KEY.sub("sk-bridge-" + REDACTED, text)
        if "earer" in text.lower():  # as the pattern, whatever the case
            text = _BEARER.sub(r"\1" + REDACTED, text)
        return text

    def headers(self, headers: dict[str, str]) -> dict[str, str]:
        return {name: self.text(value) for name, value in headers.items()}

    def frame(self, frame: Frame) -> Frame:
        raw = self.bytes(frame.raw)
        return frame if raw is frame.raw else Frame(raw, verbatim=frame.verbatim)

    def frames(self, frames: Iterator[Frame]) -> Iterator[Frame]:
        """Whole frames (SSE events, NDJSON lines), each redacted on its own."""
        for frame in frames:
            yield self.frame(frame)

    def chunks(self, frames: Iterator[Frame]) -> Iterator[Frame]:
        """Raw chunks, where a secret may straddle two chunks: the last bytes of each
        chunk are held back until the next one arrives."""
        keep = max(self.longest - 1, 0)
        pending = b""
        for frame in frames:
            data = self.bytes(pending + frame.raw)
            cut = max(len(data) - keep, 0)
            data, pending = data[:cut], data[cut:]
            if data:
                yield Frame(data, verbatim=True)
        if pending:
            yield Frame(pending, verbatim=True)


class RedactingFilter(logging.Filter):
    """A handler filter that redacts each record's message and traceback in place."""

    def __init__(self, redactor: Redactor):
        super().__init__("bridge.redaction")
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor.log_text(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.log_text(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor.log_text(record.stack_info)
        return True


def install_log_filter(redactor: Redactor) -> None:
    """Redact every record written by this process's log handlers (bridge, gunicorn,
    root); idempotent per handler."""
    for name in _LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
                handler.addFilter(RedactingFilter(redactor))
