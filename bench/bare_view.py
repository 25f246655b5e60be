"""The baseline of the cache benchmark: a bare Flask view answering every POST with the
same body, held in memory (read from the file named by BENCH_BODY_FILE at start), or,
for a request asking for a stream, with the same SSE stream (BENCH_STREAM_FILE), sent
as one body: a dict lookup, the ceiling of any cache on this stack.

    BENCH_BODY_FILE=body.json BENCH_STREAM_FILE=stream.sse \
        gunicorn -k gevent -w 2 --chdir bench bare_view:app
"""

from __future__ import annotations

import os

import flask

app = flask.Flask("bare_view")
with open(os.environ["BENCH_BODY_FILE"], "rb") as handle:
    BODY = handle.read()
STREAM = b""
if os.environ.get("BENCH_STREAM_FILE"):
    with open(os.environ["BENCH_STREAM_FILE"], "rb") as handle:
        STREAM = handle.read()


@app.post("/<path:path>")
def answer(path: str) -> flask.Response:
    data = flask.request.get_data()  # read the request like the bridge does
    if STREAM and b'"stream": true' in data:
        return flask.Response(STREAM, content_type="text/event-stream")
    return flask.Response(BODY, content_type="application/json")
