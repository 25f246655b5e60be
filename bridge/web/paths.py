"""Request paths in their normal form before anything routes them: `.` and `..` segments
resolved, whether sent raw or percent-encoded (gunicorn decodes `%2e` and `%2f` into
PATH_INFO), so that no view, cache key or upstream call sees a segment that climbs out of
`/v1/` or `/api/`. A path that climbs out of them is refused with a 404 in the error shape
of the API it started in, and never forwarded; one that stays inside is served at its
normal form, so the upstream gets no dot segment to read its own way.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import flask

from bridge.core.errors import NotFound, error_response
from bridge.web.proxy import bare_exchange, to_flask

API_PREFIXES = ("/v1/", "/api/")
ESCAPED = "bridge.escaped_path"  # environ: (surface, the path as sent) of a path refused
_DOTS = (".", "..")


def has_dot_segments(path: str) -> bool:
    return any(segment in _DOTS for segment in path.split("/"))


def normal_form(path: str) -> str:
    """`path` with its dot segments resolved (RFC 3986's remove_dot_segments) and empty
    segments dropped too, so that `/v1//../x` is `/x` as a server that first merges
    slashes reads it, not `/v1/x`: the stricter reading of the two. A `..` at the top
    stays at the top."""
    kept: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if kept:
                kept.pop()
        elif segment not in ("", "."):
            kept.append(segment)
    normal = "/" + "/".join(kept)
    if kept and path.rsplit("/", 1)[-1] in ("", *_DOTS):
        normal += "/"  # a directory stays one: `/v1/models/.` is `/v1/models/`
    return normal


def surface_of(path: str) -> str:
    return "ollama" if path.startswith("/api/") else "openai"


class NormalPaths:
    """WSGI middleware, outermost: rewrites PATH_INFO to its normal form when it holds dot
    segments, and marks a path that leaves both APIs for `refuse_escaped`."""

    def __init__(self, app: Callable[..., Iterable[bytes]]):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if "/." in path and has_dot_segments(path):  # the first test: a substring search
            normal = normal_form(path)
            environ["PATH_INFO"] = normal
            # the client's bytes are no longer this path: the upstream call quotes the
            # normal form instead (`bridge.core.upstream.upstream_path`)
            environ.pop("RAW_URI", None)
            if not normal.startswith(API_PREFIXES):
                environ[ESCAPED] = (surface_of(path), path)
        return self.app(environ, start_response)


def refuse_escaped() -> flask.Response | None:
    """A `before_request` hook: the 404 of a path that left the APIs (it may have been
    routed to any view of the bridge, which must not serve it)."""
    escaped = flask.request.environ.get(ESCAPED)
    if escaped is None:
        return None
    surface, sent = escaped
    err = NotFound(f"no route for {sent}: with its dot segments resolved it leaves "
                   f"{' and '.join(API_PREFIXES)}")
    return to_flask(bare_exchange(surface), error_response(surface, err))
