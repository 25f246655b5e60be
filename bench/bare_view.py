"""The baseline of the cache benchmark: a bare Flask view answering every POST with the
same body, held in memory (read from the file named by BENCH_BODY_FILE at start).

    BENCH_BODY_FILE=body.json gunicorn -k gevent -w 2 --chdir bench bare_view:app
"""

from __future__ import annotations

import os

import flask

app = flask.Flask("bare_view")
with open(os.environ["BENCH_BODY_FILE"], "rb") as handle:
    BODY = handle.read()


@app.post("/<path:path>")
def answer(path: str) -> flask.Response:
    flask.request.get_data()  # read the request like the bridge does
    return flask.Response(BODY, content_type="application/json")
