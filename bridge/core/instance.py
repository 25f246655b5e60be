"""The per-instance run directory that gunicorn's workers share.

The master creates it, empty, before forking (`prepare()` from the `on_starting` hook)
and passes its path to the workers in the environment. It holds what must be one
thing for the whole instance rather than one per worker: the rate limiter's token
bucket, the admission slots and the Prometheus multiprocess files. The master removes
it when it exits; one left behind by a master that was killed is removed by the next
instance that starts.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from pathlib import Path

ENV = "BRIDGE_INSTANCE_DIR"
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
_FAST_TMP = "/dev/shm"  # tmpfs: flock and mmap without disk traffic
_PREFIX = "deepseek-ollama-bridge-"
_OWNER = "owner.pid"
_GRACE_SECONDS = 60  # a directory without its owner file yet may be starting up


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this machine still runs.

    A zombie does not: a worker killed with its master (`kill -9` of the group) is
    re-parented to PID 1, and in a container PID 1 often never reaps it, so the pid
    stays taken (and `kill(pid, 0)` succeeds) long after the process is gone. The
    leases it held must still be recognised as dead at once.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether `pid` has exited and waits to be reaped (Linux's /proc; False elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:  # gone between the two looks, or no /proc (not Linux)
        return os.path.isdir("/proc/self")
    except OSError:
        return False  # unreadable: kill(pid, 0) is all we know
    # "pid (comm) state ...": comm may hold spaces and parentheses, so split at the last ')'
    state = stat.rpartition(b")")[2].split(maxsplit=1)[:1]
    return state in ([b"Z"], [b"X"])


def _remove_stale(parent: Path) -> None:
    """Remove run directories whose owner process is gone (killed before it could)."""
    for path in parent.glob(_PREFIX + "*"):
        try:
            pid = int((path / _OWNER).read_text())
        except (OSError, ValueError):
            pid = 0
        try:
            young = time.time() - path.stat().st_mtime < _GRACE_SECONDS
        except OSError:
            continue  # removed meanwhile
        if (pid and not pid_alive(pid)) or (not pid and not young):
            shutil.rmtree(path, ignore_errors=True)


def _new_directory() -> Path:
    parent = Path(_FAST_TMP if os.access(_FAST_TMP, os.W_OK) else tempfile.gettempdir())
    _remove_stale(parent)
    path = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=parent))
    (path / _OWNER).write_text(str(os.getpid()))
    return path


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


def started() -> float:
    """When this instance started (Unix time): its run directory's owner file was
    written by the master before it forked any worker."""
    try:
        return (directory() / _OWNER).stat().st_mtime
    except OSError:
        return time.time()


def cleanup() -> None:
    """Remove the run directory (the master, at exit)."""
    given = os.environ.get(ENV)
    if given:
        shutil.rmtree(given, ignore_errors=True)
