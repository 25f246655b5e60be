"""A bridge app whose workers freeze in start-up while the file lock named by
`FROZEN_LOCK` is held by another process: a stage's `start` takes it with a blocking
`flock`, holding the whole worker (its event loop never runs), as the cache's disk tier
once did. `gunicorn -c gunicorn.conf.py tests.serve.frozen_app:app`."""

from __future__ import annotations

import fcntl
import os

from bridge.core.pipeline import Stage
from bridge.core.settings import load_or_exit
from bridge.web.app import create_app


class FrozenStage(Stage):
    name = "frozen"

    def start(self) -> None:
        with open(os.environ["FROZEN_LOCK"], "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # blocking on purpose: the loop stops here


app = create_app(load_or_exit(None))
app.extensions["bridge.pipeline"].stages.insert(0, FrozenStage())
