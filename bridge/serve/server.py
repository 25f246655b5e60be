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
from typing import Any, Callable

from gunicorn.app.base import BaseApplication

from bridge.core import instance
from bridge.core.settings import Settings
from bridge.observability import logs, metrics

log = logging.getLogger("bridge.server")


def bind_address(settings: Settings) -> str:
    host, port = settings.listen
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
        "preload_app": False,  # SQLite handles, pools and greenlets must be created per worker
        "proc_name": "deepseek-ollama-bridge",
        "control_socket_disable": True,  # one per user by default: instances would collide
        "on_starting": on_starting,
        "post_fork": post_fork,
        "post_worker_init": post_worker_init,
        "child_exit": child_exit,
        "worker_exit": worker_exit,
        "when_ready": shared_mode_check(settings),
        "on_exit": on_exit,
    }


def on_starting(server: Any) -> None:
    """In the master, before any worker exists."""
    instance.prepare()  # the run directory all workers share (rate limit, slots, metrics)
    drain_on_stop_signals(server)


def drain_on_stop_signals(server: Any) -> None:
    """Make SIGINT a graceful stop like SIGTERM, and a second SIGTERM or SIGINT during the
    graceful stop a quick one (gunicorn 27 does this for a second SIGINT or SIGQUIT only).

    Runs before the master installs its signal handlers, which it takes from these
    attributes: the handler queues the signal; the main loop calls `handle_<name>`; while
    stopping, gunicorn's wait reads the queue and stops quickly on SIGINT or SIGQUIT.
    """
    queue_signal = server.signal
    stopping = False

    def handle_stop() -> None:
        nonlocal stopping
        stopping = True
        raise StopIteration  # gunicorn's graceful stop (`handle_term`)

    def on_signal(sig: int, frame: Any) -> None:
        queue_signal(signal.SIGQUIT if stopping and sig == signal.SIGTERM else sig, frame)

    server.signal = on_signal
    server.handle_term = server.handle_int = handle_stop


def post_fork(server: Any, worker: Any) -> None:
    """In each new worker, right after fork."""


def post_worker_init(worker: Any) -> None:
    """In each worker, once the app is loaded: start the stages now (background work such
    as the cache's TTL sweeps must not wait for a first request)."""
    pipeline = getattr(worker.wsgi, "extensions", {}).get("bridge.pipeline")
    if pipeline is None:
        return
    try:
        pipeline.start()
    except Exception:  # noqa: BLE001 - a worker that cannot start a stage still serves
        log.exception("starting the pipeline's stages failed")
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
        from bridge.shared_mode.keystore import KeyStoreError, open_access_warning

        try:
            warning = open_access_warning(settings.state_dir, settings.listen[0])
        except KeyStoreError as exc:
            server.log.error("--state-dir: %s", exc)
            raise SystemExit(2) from None
        if warning:
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
