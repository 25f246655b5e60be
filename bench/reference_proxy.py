"""The benchmark's yardstick: a bare Flask view forwarding the same POST with `requests`.

    REFERENCE_UPSTREAM=http://127.0.0.1:11434 gunicorn -k gevent -w 2 \
        --chdir bench reference_proxy:app

What a team would write by hand in a few lines, done well: one pooled session per worker
(sized for the worker's concurrency, `trust_env=False`), no pipeline, no checks. A
streamed answer (SSE, NDJSON) is relayed chunk by chunk as it arrives.
"""

from __future__ import annotations

import os

import flask
import requests
from requests.adapters import HTTPAdapter

app = flask.Flask(__name__)
UPSTREAM = os.environ.get("REFERENCE_UPSTREAM", "http://127.0.0.1:11434")
_session: requests.Session | None = None


def session() -> requests.Session:
    global _session
    if _session is None:  # in the worker, after fork
        _session = requests.Session()
        _session.trust_env = False
        _session.mount("http://", HTTPAdapter(pool_maxsize=256))
    return _session


@app.get("/health")
def health() -> str:
    return "ok"


STREAMS = ("text/event-stream", "application/x-ndjson")


@app.post("/v1/chat/completions")
def chat() -> flask.Response:
    upstream = session().post(UPSTREAM + flask.request.path, data=flask.request.get_data(),
                              headers={"content-type": flask.request.content_type or ""},
                              timeout=300, stream=True)
    content_type = upstream.headers.get("content-type", "")
    if content_type.startswith(STREAMS):
        return flask.Response(upstream.iter_content(None), status=upstream.status_code,
                              content_type=content_type)
    return flask.Response(upstream.content, status=upstream.status_code,
                          content_type=content_type)
