"""Redaction: secrets out of bodies, stream frames (even split across raw chunks) and
log records (messages and tracebacks), plus bearer credentials and client keys in logs."""

from __future__ import annotations

import io
import logging

from bridge.core.exchange import Frame
from bridge.core.redaction import REDACTED, RedactingFilter, Redactor

SECRET = 'up-"key"/123'  # quotes so that its JSON-escaped form differs


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


def test_a_very_short_secret_is_not_cut_out_of_answers() -> None:
    assert Redactor(["ok"]).bytes(b"it is ok") == b"it is ok"
