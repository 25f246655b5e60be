"""Keeping secrets out of what the bridge writes: log lines, response bodies, frames.

A `Redactor` knows secrets by value (the keys in the settings: the upstream key, the
metrics key) and replaces them, as they are and as JSON escapes them, with `[REDACTED]`:
in response bodies and stream frames (shared mode, in case the upstream echoes its key)
and in log text. Log text also loses every credential recognisable by its shape, whoever
sent it: `Bearer …` values, `sk-…` keys (bridge client keys included), key-like JSON or
Python-repr fields (`"api_key": "…"`) and credential query parameters (`?key=…`).

The log layer is one `RedactingFilter` per process, on the handlers of the bridge's and
gunicorn's loggers, installed by the log set-up (`bridge.observability.logs.configure`)
with the secrets of the settings: `install(secrets)`.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from typing import Iterable, Iterator
from urllib.parse import unquote_plus

from bridge.core import streaming
from bridge.core.exchange import Frame, Response

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 8

# Request headers that carry a client's credentials (OpenAI's bearer, Anthropic-style
# keys): one list for shared mode, routing, the cache's credential check, async jobs and
# the logs.
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key")

def bearer_token(authorization: str) -> str:
    """The token of an `Authorization: Bearer TOKEN` value (any case of "Bearer"), or ""."""
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def secret_matches(given: str, expected: str) -> bool:
    """Whether `given` is the configured secret, compared in constant time; never when
    no secret is configured."""
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


# Query parameters that carry credentials (Google-style `?key=`, `?api_key=`, OAuth's
# `?access_token=`, …): never sent upstream in shared mode, never logged. Lower case,
# compared after percent-decoding.
CREDENTIAL_QUERY_PARAMS = frozenset({
    "key", "api_key", "api-key", "apikey", "x-api-key", "access_token", "token",
    "auth_token", "client_secret",
})

def split_query(query: str) -> tuple[str, str]:
    """`query` as (its other parameters, its credential parameters), each byte for byte
    and in order."""
    if not query:
        return query, ""
    kept, credentials = [], []
    for part in query.split("&"):
        name = unquote_plus(part.partition("=")[0]).strip().lower()
        (credentials if name in CREDENTIAL_QUERY_PARAMS else kept).append(part)
    return "&".join(kept), "&".join(credentials)


_KEY_NAMES = r"(?:x-)?api[_-]?key|authorization|password|secret|access_token|client_secret"
# (regex, replacement): each credential shape, masked wherever it appears in a log line
_SHAPES = (
    (re.compile(r"(?i)\b(bearer\s+)[^\s'\",;\\]+"), r"\1" + REDACTED),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{4,}"), "sk-" + REDACTED),
    (re.compile(rf"(?i)(([\"'])(?:{_KEY_NAMES})\2\s*:\s*)([\"'])(?:(?!\3)[^\\]|\\.)*\3"),
     r"\1\3" + REDACTED + r"\3"),
    (re.compile(r"(?i)([?&](?:" + "|".join(re.escape(name) for name in
                                          sorted(CREDENTIAL_QUERY_PARAMS, key=len,
                                                 reverse=True)) + r")=)[^&\s#'\"]+"),
     r"\1" + REDACTED),
)
# What every shape starts with, case-folded: a line without any of these (most lines,
# every ordinary access line) has nothing to mask, which one pass finds out.
_MARKERS = ("bearer", "sk-", "api_key", "api-key", "apikey", "authorization", "password",
            "secret", "token", "?key=", "&key=")


class Redactor:
    """Replaces the given secrets in text and bytes; `log_text` also masks by shape."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets = tuple(secrets)
        forms: set[str] = set()
        for secret in self.secrets:
            # a very short "key" would be cut out of ordinary answer text: leave it
            if len(secret) >= MIN_SECRET_LENGTH:
                forms.update((secret, json.dumps(secret)[1:-1]))
        # longest first, so a secret that contains another is replaced whole
        self._text = sorted(forms, key=len, reverse=True)
        self._bytes = [form.encode() for form in self._text]
        self.forms = tuple(self._bytes)  # what `bytes` replaces: where it finds none, nothing
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
        """`text` with the known secrets and every credential-shaped value masked."""
        text = self.text(text)
        folded = text.casefold()
        if any(map(folded.__contains__, _MARKERS)):  # no Python step per marker
            for pattern, replacement in _SHAPES:
                text = pattern.sub(replacement, text)
        return text

    def headers(self, headers: dict[str, str]) -> dict[str, str]:
        return {name: self.text(value) for name, value in headers.items()}

    def response(self, response: Response, frames: bool = True) -> None:
        """Scrub a response on its way out (its headers, body or stream), in case the
        upstream echoes the key it was sent. `frames` False: not its frames (they are
        scrubbed where they are read, with `frame`)."""
        response.headers = self.headers(response.headers)
        if response.frames is None:
            body = self.bytes(response.body)
            if body is not response.body:
                response.set_body(body)
            return
        if not frames:
            return
        raw = response.codec == streaming.RAW
        # frames are passed on one for one: their write marks stay good
        response.map_frames(self.chunks if raw else self.frames, keeps_marks=not raw)

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
    """A handler filter that redacts each record in place: its message (arguments
    merged in), traceback, stack and the string values of structured `fields`."""

    def __init__(self, redactor: Redactor):
        super().__init__("bridge.redaction")
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_bridge_redacted", False):  # several handlers, one record
            return True
        log_text = self.redactor.log_text
        message = record.getMessage()
        record.msg, record.args = log_text(message), None
        if record.msg != message:
            # structured fields (JSON access lines) repeat what the message says
            fields = getattr(record, "fields", None)
            if isinstance(fields, dict):
                record.fields = {name: log_text(value) if isinstance(value, str) else value
                                 for name, value in fields.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = log_text(record.exc_text)
        if record.stack_info:
            record.stack_info = log_text(record.stack_info)
        record._bridge_redacted = True
        return True


# Every handler of these loggers gets the filter: the bridge's own, gunicorn's (its error
# log, and its access log should anyone turn it on) and the root logger's.
LOGGERS = ("bridge", "gunicorn.error", "gunicorn.access", "")

_filter = RedactingFilter(Redactor())


def install(secrets: Iterable[str]) -> RedactingFilter:
    """Redact every record this process's log handlers write, knowing `secrets`; called
    by the log set-up. Idempotent: a second call only updates the secrets."""
    _filter.redactor = Redactor(secrets)
    _install_filter()
    return _filter


def add(secrets: Iterable[str]) -> None:
    """Redact `secrets` too from this process's log lines (keys learned after the log
    set-up: the routed upstreams' own keys)."""
    _filter.redactor = Redactor([*_filter.redactor.secrets, *secrets])
    _install_filter()


def _install_filter() -> None:
    for name in LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if _filter not in handler.filters:
                handler.addFilter(_filter)
