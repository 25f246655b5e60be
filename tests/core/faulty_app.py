"""A bridge app with a fault-injecting stage at every position of the pipeline, for the
failure-containment tests: `gunicorn -c gunicorn.conf.py tests.core.faulty_app:app`.

Each injected stage does nothing unless the request's `x-fault` header names its
position and a phase (`2:on_request`, `0:frames`, …); then it raises there. The other
stages are the real ones, configured by the BRIDGE_* environment like `wsgi.py`.
"""

from __future__ import annotations

from typing import Iterator

from bridge.core.exchange import Exchange, Frame
from bridge.core.pipeline import Stage
from bridge.core.settings import load_or_exit
from bridge.web.app import create_app


class InjectedFault(RuntimeError):
    pass


class FaultyStage(Stage):
    def __init__(self, position: int):
        self.position = position
        self.name = f"faulty-{position}"

    def _armed(self, ex: Exchange, phase: str) -> bool:
        return ex.headers.get("x-fault") == f"{self.position}:{phase}"

    def on_request(self, ex: Exchange) -> None:
        if self._armed(ex, "on_request"):
            raise InjectedFault(f"injected in on_request at {self.position}")
        if self._armed(ex, "closer"):
            ex.on_close(self._fail_closing)

    def on_response(self, ex: Exchange) -> None:
        if self._armed(ex, "on_response"):
            raise InjectedFault(f"injected in on_response at {self.position}")
        if self._armed(ex, "frames") and ex.response is not None and ex.response.streaming:
            ex.response.map_frames(self._explode)

    def _explode(self, frames: Iterator[Frame]) -> Iterator[Frame]:
        for count, frame in enumerate(frames):
            if count == 2:
                raise InjectedFault(f"injected in a frame generator at {self.position}")
            yield frame

    def _fail_closing(self, ex: Exchange) -> None:
        raise InjectedFault(f"injected in a closer at {self.position}")


app = create_app(load_or_exit(None))
_pipeline = app.extensions["bridge.pipeline"]
_real = list(_pipeline.stages)
_pipeline.stages[:] = [stage for position, real in enumerate(_real)
                       for stage in (FaultyStage(position), real)] + [FaultyStage(len(_real))]
