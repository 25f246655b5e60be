"""The operator's console: a live status page at `/` and `/console`, fed by `/status`.

`status` aggregates the metrics registry (all workers), `history` keeps the last 15
minutes of it, `recent` the last errors and requests (the request log), `access` decides
who may look, `routes` serves it all with the page's static files from `static/`.
"""
