"""The console's routes: the page (`/`, `/console`), its files, its login form,
`/status` and `/status/requests` (the request log), each behind `access`.

`/status?since=T` returns only the history points after T, so the page, polling every
second, fetches the 15 minutes once and then one point at a time.
"""

from __future__ import annotations

import math
import time
from importlib import resources

import flask

from bridge.console import access, history, recent, status
from bridge.console.login_backoff import LoginBackoff
from bridge.core.errors import BadRequest, BridgeError, Forbidden, Unauthorized, error_response
from bridge.core.redaction import secret_matches
from bridge.core.settings import Settings
from bridge.usage.report import StatusSection

blueprint = flask.Blueprint("console", __name__)

STATIC = {"console.css": "text/css", "console.js": "text/javascript"}
CHALLENGE = {"www-authenticate": 'Bearer realm="deepseek-ollama-bridge console"'}
REMOTE_MESSAGE = ("the console is served to loopback clients only; start the bridge with "
                  "--admin-key to open it to others")
_NO_STORE = {"cache-control": "no-store"}
_backoff = LoginBackoff()  # opens its file on first use, in the worker


def init_app(app: flask.Flask, settings: Settings) -> None:
    """Serve the console on `app` unless `--disable-console`."""
    if settings.disable_console:
        return
    recent.start(settings)
    app.extensions["bridge.usage"] = StatusSection(settings)
    app.register_blueprint(blueprint)


def _settings() -> Settings:
    return flask.current_app.extensions["bridge.settings"]


def _admin_key() -> str:
    key = _settings().admin_key
    return key.reveal() if key else ""


def _refusal(decision: str, html: bool) -> flask.Response:
    if decision == access.WRONG_KEY:
        err: BridgeError = Unauthorized("Incorrect admin key: the console opens with the "
                                        "--admin-key, never a client key", headers=CHALLENGE)
    elif decision == access.LOGIN:
        if html:
            return _login_form("", 401)
        err = Unauthorized("Missing admin key: send 'Authorization: Bearer <the --admin-key>'",
                           headers=CHALLENGE)
    else:
        err = Forbidden(REMOTE_MESSAGE, code="console_loopback_only")
    if html:
        return flask.Response(f"<!doctype html><title>Console</title><p>{err.message}</p>",
                              status=err.status, headers={**err.headers,
                                                          "content-type": "text/html"})
    return _json_error(err)


def _json_error(err: BridgeError) -> flask.Response:
    """`err` in the OpenAI error shape, as `/metrics` refuses too."""
    refusal = error_response("openai", err)
    return flask.Response(refusal.body, status=refusal.status, headers=refusal.headers)


def _guard(html: bool) -> flask.Response | None:
    decision = access.decide(flask.request, _admin_key())
    return None if decision == access.ALLOWED else _refusal(decision, html)


def _asset(name: str) -> bytes:
    return resources.files("bridge.console").joinpath("static", name).read_bytes()


@blueprint.get("/")
@blueprint.get("/console")
def page() -> flask.Response:
    refused = _guard(html=True)
    if refused is not None:
        return refused
    return flask.Response(_asset("console.html"), headers={"content-type": "text/html; "
                                                           "charset=utf-8", **_NO_STORE})


@blueprint.get("/console/static/<name>")
def asset(name: str) -> flask.Response:
    refused = _guard(html=False)
    if refused is not None:
        return refused
    if name not in STATIC:
        flask.abort(404)
    return flask.Response(_asset(name), headers={"content-type": STATIC[name] + "; "
                                                 "charset=utf-8", **_NO_STORE})


def _login_form(message: str, code: int) -> flask.Response:
    shown = f'<p class="error">{message}</p>' if message else ""
    body = _asset("login.html").decode().replace("<!--message-->", shown)
    return flask.Response(body, status=code, headers={"content-type": "text/html; "
                                                      "charset=utf-8", **_NO_STORE})


@blueprint.post("/console/login")
def login() -> flask.Response:
    admin_key = _admin_key()
    if not admin_key:
        return _refusal(access.REFUSED, html=True)
    address = flask.request.remote_addr or ""
    backoff = _backoff
    wait = backoff.wait(address)
    if wait > 0:  # the key is not even looked at: guessing goes no faster than this
        return _slowed_down("", wait)
    if not secret_matches(flask.request.form.get("key", ""), admin_key):
        wait = backoff.failed(address)
        if wait > 0:
            return _slowed_down("That is not the admin key. ", wait)
        return _login_form("That is not the admin key.", 401)
    backoff.succeeded(address)
    response = flask.redirect("/console", code=303)
    response.set_cookie(access.COOKIE, access.cookie_value(admin_key), httponly=True,
                        max_age=access.COOKIE_LIFETIME, samesite="Strict",
                        secure=flask.request.is_secure)
    return response


def _slowed_down(said: str, wait: float) -> flask.Response:
    seconds = math.ceil(wait)
    response = _login_form(f"{said}Too many failed logins from your address: try again in "
                           f"{seconds} s.", 429)
    response.headers["retry-after"] = str(seconds)
    return response


@blueprint.get("/status")
def status_json() -> flask.Response:
    refused = _guard(html=False)
    if refused is not None:
        return refused
    began = time.perf_counter()
    try:
        since = float(flask.request.args.get("since", "0") or 0)
    except ValueError:
        return _json_error(BadRequest("since must be a Unix time in seconds", param="since"))
    found = status.snapshot(_settings(),
                            workers=flask.current_app.extensions.get("bridge.workers"))
    counters = found.pop("counters")
    bounds = {"latency": found.pop("latency_bounds"), "ttft": found.pop("ttft_bounds")}
    points = history.update(counters, bounds, found["time"])
    found["history"] = [point for point in points if point["t"] > since]
    found["history_window_seconds"] = history.WINDOW_SECONDS
    found["errors"] = recent.errors()
    found["usage"] = flask.current_app.extensions["bridge.usage"].get()
    found["status_ms"] = round((time.perf_counter() - began) * 1000, 2)
    return flask.Response(flask.json.dumps(found), headers={
        "content-type": "application/json", **_NO_STORE})


@blueprint.get("/status/requests")
def request_log() -> flask.Response:
    """The request log of all workers, newest first (`--request-log-size` per worker)."""
    refused = _guard(html=False)
    if refused is not None:
        return refused
    settings = _settings()
    found = {"size": settings.request_log_size, "bodies": settings.request_log_bodies,
             "requests": recent.requests(settings.request_log_size * settings.worker_count)}
    return flask.Response(flask.json.dumps(found), headers={
        "content-type": "application/json", **_NO_STORE})
