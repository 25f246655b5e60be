"""`PacedReader` (bridge/core/streaming.py): a timed read gives up its wait, not its read;
what the source raises reaches the reader; closing it ends a read under way. The source
waits on events the test sets, never on time."""

from __future__ import annotations

import time

import gevent.event
import pytest

from bridge.core.exchange import Frame
from bridge.core.streaming import TIMED_OUT, PacedReader


def soon(seconds: float = 0.01) -> float:
    return time.monotonic() + seconds


def test_a_timed_read_gives_up_its_wait_and_the_next_call_gets_the_same_read():
    ready = gevent.event.Event()
    read = []

    def source():
        yield Frame(b"1")
        read.append("waiting")
        ready.wait()
        yield Frame(b"2")
        raise ValueError("the upstream failed")

    reader = PacedReader(source())
    assert reader.read(soon()).raw == b"1"  # there at once
    assert reader.read(soon()) is TIMED_OUT and reader.read(soon()) is TIMED_OUT
    assert read == ["waiting"]  # one read, still under way
    ready.set()
    assert reader.read(None).raw == b"2"
    with pytest.raises(ValueError, match="the upstream failed"):
        reader.read(soon(5))


def test_an_untimed_read_is_a_plain_one_and_the_end_is_none():
    reader = PacedReader(iter([Frame(b"a")]))
    assert reader.read().raw == b"a" and reader.read() is None


def test_closing_ends_a_read_under_way_and_closes_the_source():
    closed = []

    def source():
        try:
            yield Frame(b"a")
            gevent.event.Event().wait()  # a silent upstream
            yield Frame(b"never")
        finally:
            closed.append(True)

    reader = PacedReader(source())
    assert reader.read(soon()).raw == b"a"
    assert reader.read(soon()) is TIMED_OUT
    reader.close()
    assert closed == [True]
