"""The `Stream` object: its finalizers run exactly once however the stream ends (read to
its end, failed, closed before its first item or after it), `map_frames` chains close
down to the innermost stream, started or not, and the pipeline closes a stream it
replaces."""

from __future__ import annotations

from typing import Iterator

import pytest

from bridge.core import settings as bridge_settings
from bridge.core.exchange import Exchange, Frame, Response, Stream
from bridge.core.pipeline import Pipeline, Stage


def frames(count: int, fail_at: int | None = None) -> Iterator[Frame]:
    for index in range(count):
        if index == fail_at:
            raise RuntimeError("mid-stream")
        yield Frame(b'{"n":%d}' % index)


class Released:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, name: str = "resource"):
        return lambda: self.calls.append(name)


def test_closed_before_its_first_item_runs_the_finalizers_once() -> None:
    released = Released()
    stream = Stream(frames(3), released("connection"))
    stream.on_close(released("in-flight"))
    stream.close()
    stream.close()
    assert released.calls == ["in-flight", "connection"]  # the last taken, first released


def test_read_to_its_end_it_closes_itself_once() -> None:
    released = Released()
    stream = Stream(frames(3), released())
    assert len(list(stream)) == 3
    assert released.calls == ["resource"]  # at the end, before anyone closes it
    stream.close()
    assert released.calls == ["resource"]


def test_a_failure_mid_stream_runs_the_finalizers() -> None:
    released = Released()
    stream = Stream(frames(3, fail_at=1), released())
    with pytest.raises(RuntimeError):
        list(stream)
    assert released.calls == ["resource"]
    stream.close()
    assert released.calls == ["resource"]


def test_a_finalizer_registered_after_the_close_runs_at_once() -> None:
    released = Released()
    stream = Stream(frames(1))
    stream.close()
    stream.on_close(released())
    assert released.calls == ["resource"]


def test_a_failing_finalizer_does_not_skip_the_others() -> None:
    released = Released()

    def broken() -> None:
        raise RuntimeError("broken finalizer")

    stream = Stream(frames(1), released("first"), broken, released("last"))
    stream.close()
    assert released.calls == ["last", "first"]


@pytest.mark.parametrize("keeps_marks", [True, False])
@pytest.mark.parametrize("read", [0, 1, 3])
def test_a_mapped_chain_closed_at_any_point_releases_the_innermost_once(
        keeps_marks: bool, read: int) -> None:
    released = Released()
    response = Response(status=200, frames=Stream(frames(3), released("upstream")),
                        codec="ndjson")
    response.on_close(released("route"))
    transformed: list[str] = []

    def transform(source: Iterator[Frame]) -> Iterator[Frame]:
        try:
            yield from source
        finally:
            transformed.append("closed")

    response.map_frames(transform, keeps_marks=keeps_marks)
    response.map_frames(lambda source: (frame for frame in source))
    assert response.frames is not None
    for _ in range(read):
        next(response.frames, None)
    response.close()
    response.close()
    assert released.calls == ["route", "upstream"]
    assert transformed == (["closed"] if read else [])  # a generator never started: no finally


def test_on_close_of_a_whole_body_runs_at_once() -> None:
    released = Released()
    Response(status=200, body=b"{}").on_close(released())
    assert released.calls == ["resource"]


class Replacing(Stage):
    """Answers its on_response with a response of its own, or fails there."""

    name = "replacing"

    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def on_response(self, ex: Exchange) -> None:
        if self.fail:
            raise RuntimeError("injected")
        ex.response = Response(status=200, body=b"{}")


class StreamingUpstream:
    """An upstream client whose stream counts how often its finalizer ran."""

    def __init__(self) -> None:
        self.released = Released()

    def send(self, ex: Exchange) -> Response:
        return Response(status=200, frames=Stream(frames(3), self.released()), codec="ndjson")


@pytest.mark.parametrize("fail", [False, True])
def test_the_pipeline_closes_a_stream_it_replaces_unread(fail: bool) -> None:
    pipeline = Pipeline(bridge_settings.defaults(), features=())
    pipeline.stages = [Replacing(fail)]
    upstream = StreamingUpstream()
    pipeline.context.upstream = upstream  # type: ignore[assignment]
    ex = Exchange(surface="openai", endpoint="chat", method="POST",
                  path="/v1/chat/completions", query="", headers={}, body=b"{}",
                  request_id="r", payload={})
    response = pipeline.run(ex)
    assert response.status == (500 if fail else 200) and not response.streaming
    assert upstream.released.calls == ["resource"]
