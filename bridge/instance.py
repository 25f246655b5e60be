"""The per-instance run directory that gunicorn's workers share.

The master creates it, empty, before forking (`prepare()` from the `on_starting` hook)
and passes its path to the workers in the environment. It holds what must be one
thing for the whole instance rather than one per worker: the rate limiter's token
bucket, the admission slots and the Prometheus multiprocess files. The master removes
it when it exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

ENV = "BRIDGE_INSTANCE_DIR"
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
_FAST_TMP = "/dev/shm"  # tmpfs: flock and mmap without disk traffic


def _new_directory() -> Path:
    parent = _FAST_TMP if os.access(_FAST_TMP, os.W_OK) else tempfile.gettempdir()
    return Path(tempfile.mkdtemp(prefix="deepseek-ollama-bridge-", dir=parent))


def prepare() -> Path:
    """Create a fresh, empty run directory for this instance and export its path.

    Called in the master before any worker exists, so that every worker inherits the
    same path, and before anything imports `prometheus_client` (it reads
    `PROMETHEUS_MULTIPROC_DIR` at import).
    """
    path = _new_directory()
    (path / "metrics").mkdir()
    os.environ[ENV] = str(path)
    os.environ[METRICS_ENV] = str(path / "metrics")
    return path


def directory() -> Path:
    """The run directory; a process started without the master (tests, tools) gets its own."""
    given = os.environ.get(ENV)
    if given and Path(given).is_dir():
        return Path(given)
    path = prepare()
    atexit.register(shutil.rmtree, path, True)
    return path


def cleanup() -> None:
    """Remove the run directory (the master, at exit)."""
    given = os.environ.get(ENV)
    if given:
        shutil.rmtree(given, ignore_errors=True)
