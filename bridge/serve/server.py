"""Running the bridge under gunicorn with gevent workers.

`gunicorn_options(settings)` is the one translation of bridge settings into gunicorn
configuration; `gunicorn.conf.py` and the `deepseek-ollama-bridge` command both use
it, so both ways of starting the bridge run the same app the same way. Nothing here
imports the app before gunicorn forks its workers.
"""

from __future__ import annotations

import gc
import logging
import math
import signal
import sys
from typing import Any, Callable

from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from bridge.core import instance
from bridge.core.settings import PROG, Settings
from bridge.observability import logs, metrics


def bind_address(settings: Settings) -> str:
    host, port = settings.listen
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_or_exit(settings: Settings) -> None:
    """Start-up checks beyond the settings' own: the upstreams file is valid (keys found),
    the Lua script loads and defines its hooks. A failure stops the bridge before it
    serves: one line on stderr, exit status 2."""
    if settings.upstreams:
        from bridge.routing.config import UpstreamsError, load

        try:
            load(settings.upstreams, shared_mode=settings.enable_shared_mode)
        except UpstreamsError as exc:
            print(f"{PROG}: error: --upstreams: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    if not settings.enable_luajit:
        return
    from bridge.lua.runtime import ScriptError, check_script, script_config

    try:
        check_script(script_config(settings))
    except ScriptError as exc:
        print(f"{PROG}: error: --luajit-script: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "bind": [bind_address(settings)],
        "workers": settings.worker_count,
        "worker_class": "bridge.serve.worker.GeventWorker",
        "worker_connections": 2000,
        "keepalive": 5,
        # gunicorn's deadline counts from the signal: the drain delay, then the grace period
        "graceful_timeout": math.ceil((settings.drain_delay + settings.graceful_timeout) / 1000),
        "timeout": 60,
        "loglevel": "debug" if settings.debug else "info",
        "accesslog": None,
        "logconfig_dict": logs.gunicorn_logconfig(settings),
        "logger_class": f"{__name__}.{GunicornLogger.__name__}",
        "preload_app": False,  # SQLite handles, pools and greenlets must be created per worker
        "proc_name": "deepseek-ollama-bridge",
        "control_socket_disable": True,  # one per user by default: instances would collide
        "on_starting": starting(settings),
        "post_worker_init": post_worker_init,
        "child_exit": child_exit,
        "worker_exit": worker_exit,
        "when_ready": shared_mode_check(settings),
        "on_exit": on_exit,
    }


class GunicornLogger(glogging.Logger):
    """gunicorn's logger, its access log off when its logger takes no lines.

    gunicorn builds each request's access-log fields (its whole environment among them:
    30 µs a request) whenever a log configuration is given, though nothing writes them;
    `--log-format json` gives one, with gunicorn's access log off (the bridge writes its
    own access lines)."""

    @property
    def access_log_enabled(self) -> bool:
        return bool(super().access_log_enabled) and self.access_log.isEnabledFor(logging.INFO)


def starting(settings: Settings) -> Callable[[Any], None]:
    """The master's `on_starting` hook (a closure: gunicorn logs its config)."""

    def on_starting(server: Any) -> None:
        """In the master, before any worker exists."""
        instance.prepare()  # the run directory all workers share (rate limit, slots, metrics)
        logs.configure(settings)  # the master's lines are redacted as the workers' are
        drain_on_stop_signals(server)

    return on_starting


def drain_on_stop_signals(server: Any) -> None:
    """Make SIGINT a graceful stop like SIGTERM, and a second SIGTERM or SIGINT a quick one
    (gunicorn 27 does this for a second SIGINT or SIGQUIT only, and only once its main
    loop has read the first).

    Runs before the master installs its signal handlers, which it takes from these
    attributes: the handler queues the signal and the main loop calls `handle_<name>`.
    The second stop signal is acted on in the handler itself: the main loop reads the
    queue in batches, and drops the rest of a batch once a stop begins.
    """
    queue_signal = server.signal
    stop_signals = 0

    def on_signal(sig: int, frame: Any) -> None:
        nonlocal stop_signals
        if sig in (signal.SIGTERM, signal.SIGINT):
            stop_signals += 1
            if stop_signals > 1:
                server.kill_workers(signal.SIGQUIT)  # the workers' quick stop
                sig = signal.SIGQUIT  # and gunicorn's: no more waiting for them
        queue_signal(sig, frame)

    server.signal = on_signal
    server.handle_int = server.handle_term  # a graceful stop (gunicorn: a quick one)


def post_worker_init(worker: Any) -> None:
    """In each worker, once the app is loaded: tell the app how many workers gunicorn
    runs (for `/status`) and start the stages now (background work such as the cache's
    TTL sweeps must not wait for a first request)."""
    extensions = getattr(worker.wsgi, "extensions", {})
    # gunicorn's count, not the settings': a `-w` on gunicorn's command line overrides them
    extensions["bridge.workers"] = worker.cfg.workers
    pipeline = extensions.get("bridge.pipeline")
    if pipeline is None:
        return
    pipeline.start()  # a stage that fails to start is logged; the worker still serves
    # What start-up made lives as long as the worker: out of the collector's way, so a
    # full collection no longer walks it while the event loop waits (measured with the
    # app loaded: 44k objects, a full collection 14 ms; after freeze() under 0.1 ms).
    gc.freeze()


def worker_exit(server: Any, worker: Any) -> None:
    """In each worker, once it has stopped serving: stop the stages' background work so
    that nothing is left half-written."""
    pipeline = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("bridge.pipeline")
    if pipeline is not None:
        pipeline.stop()


def child_exit(server: Any, worker: Any) -> None:
    """In the master, when a worker has exited."""
    metrics.worker_exited(worker.pid)


def on_exit(server: Any) -> None:
    """In the master, just before it exits."""
    instance.cleanup()


def shared_mode_check(settings: Settings) -> Callable[[Any], None]:
    """The master's start-up check of shared mode (a closure: gunicorn logs its config)."""

    def when_ready(server: Any) -> None:
        if not settings.enable_shared_mode:
            return
        from bridge.shared_mode.keystore import (
            KeyStoreError,
            metrics_exposure_warning,
            open_access_warning,
        )

        host = settings.listen[0]
        try:
            warnings = [open_access_warning(settings.state_dir, host),
                        metrics_exposure_warning(host, bool(settings.metrics_key))]
        except KeyStoreError as exc:
            server.log.error("--state-dir: %s", exc)
            raise SystemExit(2) from None
        for warning in filter(None, warnings):
            server.log.warning("%s", warning)

    return when_ready


class BridgeServer(BaseApplication):
    """gunicorn run from Python, with the bridge's settings and app."""

    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for name, value in gunicorn_options(self.settings).items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        from bridge.web.app import create_app  # in the worker, after gevent has patched

        return create_app(self.settings)


def serve(settings: Settings) -> None:
    BridgeServer(settings).run()
