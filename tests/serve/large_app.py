"""The bridge's app with one more path, `/large`: `LARGE`, 16 MiB in one chunk, more
than a loopback socket's send buffer takes at once (a few MiB at most), so the worker's
first write sends part of it and the rest after. `gunicorn -c gunicorn.conf.py
tests.serve.large_app:app`."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from bridge.core.settings import load_or_exit
from bridge.web.app import create_app

LARGE = bytes(range(256)) * (64 * 1024)

app = create_app(load_or_exit(None))
_bridge = app.wsgi_app


def _with_large(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") != "/large":
        return _bridge(environ, start_response)
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(LARGE)))])
    return [LARGE]


app.wsgi_app = _with_large  # type: ignore[method-assign]
