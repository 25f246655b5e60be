"""Logging set-up for the bridge's processes: text or JSON lines, credentials masked.

`configure(settings)` routes the bridge's loggers to stderr and installs the one
redaction layer (`bridge.core.redaction`) on every handler of the bridge's and
gunicorn's loggers, knowing the secrets of the settings: every line is written with
those and any credential-shaped value masked, tracebacks included. `--log-format json`
writes one JSON object per line, with the structured fields of access lines as keys of
their own.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Mapping

from gevent import monkey

from bridge.core import redaction
from bridge.core.redaction import CREDENTIAL_HEADERS, REDACTED
from bridge.core.settings import Settings, configured_secrets
from bridge.core.turns import TurnEnd

_NativeRLock = monkey.get_original("_thread", "RLock")

FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
ACCESS_LOGGER = "bridge.access"  # a line per request, once its answer is out

# Headers whose values are credentials: never logged.
SECRET_HEADERS = frozenset({*CREDENTIAL_HEADERS, "proxy-authorization", "cookie",
                            "set-cookie"})


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


class LineHandler(logging.StreamHandler):
    """The bridge's lines to stderr. In a worker (`write_per_turn`), an access line (one
    per request, written once its answer went out) waits for the end of the event loop's
    turn, and those of one turn go out in one write; any other line goes out at once,
    after those waiting (what a request logs while it runs is in the log before its
    answer is sent), as does any line of another native thread.

    Its lock is a native one: no greenlet switches while a line is written (nothing in
    it waits on the loop), and a line of another native thread waits its turn."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self.pending: list[str] = []
        self.turn_end: TurnEnd | None = None

    def createLock(self) -> None:
        self.lock = _NativeRLock()
        logging._register_at_fork_reinit_lock(self)  # type: ignore[attr-defined]

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.pending.append(self.format(record) + self.terminator)
        except Exception:  # noqa: BLE001 - logging's own contract: reported, not raised
            self.handleError(record)
            return
        turn_end = self.turn_end
        if turn_end is not None and record.name == ACCESS_LOGGER and turn_end.on_loop():
            turn_end.ask()
        else:
            self.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            lines, self.pending = self.pending, []
            if self.stream:
                if lines:
                    self.stream.write(lines[0] if len(lines) == 1 else "".join(lines))
                self.stream.flush()
        finally:
            self.release()

    def write_per_turn(self) -> None:
        """From now on (in this process's loop), access lines wait for the end of the
        loop's turn."""
        if self.turn_end is None:
            self.turn_end = TurnEnd(self.flush)


def write_per_turn() -> None:
    """The bridge's access lines written once per turn of this worker's event loop (see
    `LineHandler`)."""
    for handler in logging.getLogger("bridge").handlers:
        if isinstance(handler, LineHandler):
            handler.write_per_turn()


class TextFormatter(logging.Formatter):
    """Plain text lines (credentials were masked by the handler's redaction filter)."""

    _second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        """As logging's; a line of `FORMAT` without a traceback (every access line) is
        made in one step."""
        if self._fmt is not FORMAT or record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        return "%s [%d] %s %s: %s" % (record.asctime, record.process, record.levelname,
                                      record.name, record.message)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """As logging's, with the date and time formatted once per second."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if self._second[0] != second:
            self._second = (second, time.strftime(self.default_time_format,
                                                  self.converter(record.created)))
        return self.default_msec_format % (self._second[1], record.msecs)


class JsonFormatter(TextFormatter):
    """One JSON object per line: time, level, logger, pid, message, and the record's
    structured `fields` (access lines) as keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info or record.exc_text:
            line["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(settings: Settings) -> None:
    """Route the bridge's loggers to stderr at INFO (DEBUG with `-d`) and redact every
    handler's lines (gunicorn's too) with the settings' secrets; idempotent."""
    root = logging.getLogger("bridge")
    root.setLevel(logging.DEBUG if settings.debug else logging.INFO)
    # No format of ours shows a thread's or a process's name: a record need not look them
    # up (under gevent, the current "thread" is a greenlet's, found through the hub)
    logging.logThreads = logging.logMultiprocessing = False
    formatter = (JsonFormatter() if getattr(settings, "log_format", "text") == "json"
                 else TextFormatter(FORMAT))
    handler = next((h for h in root.handlers if getattr(h, "_bridge", False)), None)
    if handler is None:
        handler = LineHandler(sys.stderr)
        handler._bridge = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    handler.setFormatter(formatter)
    redaction.install(configured_secrets(settings))


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
