"""Redaction: secrets out of bodies, stream frames (even split across raw chunks) and log
records; in logs also every credential recognisable by its shape. One layer, installed
by the log set-up with every secret of the settings, on the bridge's and gunicorn's
handlers."""

from __future__ import annotations

import io
import json
import logging
from typing import Iterator

import pytest

from bridge.core import redaction
from bridge.core.exchange import Frame
from bridge.core.redaction import REDACTED, RedactingFilter, Redactor
from bridge.core.settings import load
from bridge.observability import logs

SECRET = 'up-"key"/123'  # quotes so that its JSON-escaped form differs
UPSTREAM_KEY = "upstream-0123456789abcdef"
METRICS_KEY = "metrics-fedcba9876543210"


def test_bodies_lose_the_secret_as_it_is_and_json_escaped() -> None:
    redactor = Redactor([SECRET])
    body = b'{"error":"bad key up-\\"key\\"/123"} raw: up-"key"/123'
    assert redactor.bytes(body) == f'{{"error":"bad key {REDACTED}"}} raw: {REDACTED}'.encode()
    untouched = b'{"ok":true}'
    assert redactor.bytes(untouched) is untouched


def test_frames_are_rebuilt_only_when_they_held_the_secret() -> None:
    redactor = Redactor([SECRET])
    clean, dirty = Frame(b'{"a":1}'), Frame(b"event: x\ndata: up-\"key\"/123", verbatim=True)
    out = list(redactor.frames(iter([clean, dirty])))
    assert out[0] is clean
    assert out[1].raw == b"event: x\ndata: " + REDACTED.encode() and out[1].verbatim


def test_raw_chunks_split_inside_the_secret_are_redacted() -> None:
    redactor = Redactor(["SECRETKEY"])
    chunks = [b"aaa SEC", b"RET", b"KEY bbb", b"c"]
    out = b"".join(frame.raw for frame in redactor.chunks(iter(Frame(c) for c in chunks)))
    assert out == b"aaa " + REDACTED.encode() + b" bbbc"


def test_log_records_are_redacted_messages_arguments_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(Redactor(["UPSTREAM-KEY"])))
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("headers %s", {"authorization": "Bearer UPSTREAM-KEY"})
        logger.warning("client sent authorization: bearer sk-own-credential")
        logger.warning("client sent AUTHORIZATION: BEARER SHOUTED-CREDENTIAL")
        logger.warning("key %s", "sk-bridge-abcdefghijklmnop")
        try:
            raise ValueError("UPSTREAM-KEY")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "UPSTREAM-KEY" not in text and "sk-own-credential" not in text
    assert "SHOUTED-CREDENTIAL" not in text
    assert "abcdefghijklmnop" not in text
    assert text.count(REDACTED) >= 4 and "ValueError" in text


@pytest.mark.parametrize("line, secret", [
    ("Authorization: Bearer sk-live-SECRET0123", "SECRET0123"),
    ("AUTHORIZATION: BEARER opaque-SECRET-token", "SECRET"),
    ("key sk-live-SECRET0123456789 in prose", "SECRET"),
    ('{"model": "m", "api_key": "hunter2"}', "hunter2"),
    ('{"PassWord" : "hunter2"}', "hunter2"),
    ("headers {'x-api-key': 'hunter2', 'accept': '*/*'}", "hunter2"),
    ('{"headers": {"api-key": "hunter2"}}', "hunter2"),
    ("-> GET /v1/models?key=hunter2&limit=5", "hunter2"),
    ("-> GET /v1/models?limit=5&API_KEY=hunter2", "hunter2"),
    ("GET /x?api-key=hunter2#frag", "hunter2"),
    ("GET /x?access_token=hunter2 HTTP/1.1", "hunter2"),
])
def test_log_text_masks_credentials_by_their_shape(line: str, secret: str) -> None:
    masked = Redactor().log_text(line)
    assert secret not in masked and REDACTED in masked


def test_ordinary_lines_are_left_alone() -> None:
    for line in ('{"max_tokens": 5}', '1.2.3.4 "POST /api/chat" 200 3.1ms cache=MISS key=- id=x',
                 "GET /v1/models?limit=5&monkey=banana"):
        assert Redactor().log_text(line) == line


def test_a_very_short_secret_is_not_cut_out_of_answers() -> None:
    assert Redactor(["ok"]).bytes(b"it is ok") == b"it is ok"


@pytest.fixture
def log_state() -> Iterator[io.StringIO]:
    """A capturing handler on the bridge's and gunicorn's loggers; their state restored."""
    names = ("bridge", "gunicorn.error")
    saved = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate,
                    logging.getLogger(name).level) for name in names}
    stream = io.StringIO()
    for name in names:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logs.JsonFormatter() if name == "bridge" else logging.Formatter())
        logging.getLogger(name).addHandler(handler)
    try:
        yield stream
    finally:
        for name, (handlers, propagate, level) in saved.items():
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if handler not in handlers:
                    logger.removeHandler(handler)
            logger.propagate, logger.level = propagate, level
        redaction.install(())


def test_the_log_set_up_masks_every_secret_of_the_settings_in_one_layer(
        log_state: io.StringIO) -> None:
    settings = load(["--api-key", UPSTREAM_KEY, "--metrics-key", METRICS_KEY,
                     "--log-format", "json"], environ={})
    logs.configure(settings)
    logs.configure(settings)  # idempotent: still one filter per handler
    bridge_log, gunicorn_log = logging.getLogger("bridge.test"), logging.getLogger(
        "gunicorn.error")
    bridge_log.warning("upstream said %s", f"invalid key {UPSTREAM_KEY}")
    bridge_log.warning("scrape with %s", METRICS_KEY,
                       extra={"fields": {"path": f"/m/{METRICS_KEY}", "status": 200}})
    bridge_log.warning('body {"note": "%s"}', json.dumps(UPSTREAM_KEY)[1:-1])
    gunicorn_log.warning("error while handling /v1/models?api_key=hunter2 %s", METRICS_KEY)
    try:
        raise RuntimeError(f"boom {UPSTREAM_KEY}")
    except RuntimeError:
        bridge_log.exception("failed with Bearer %s", "client-credential-123")
    text = log_state.getvalue()
    for secret in (UPSTREAM_KEY, METRICS_KEY, "hunter2", "client-credential-123"):
        assert secret not in text
    assert text.count(REDACTED) >= 7 and "RuntimeError" in text
    for name in redaction.LOGGERS:
        for handler in logging.getLogger(name).handlers:
            assert sum(isinstance(f, RedactingFilter) for f in handler.filters) <= 1
    json_lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert len(json_lines) == 4 and all(REDACTED in line["message"] for line in json_lines)
    assert json_lines[1]["path"] == f"/m/{REDACTED}"
