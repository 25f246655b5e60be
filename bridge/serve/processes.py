"""Starting and stopping bridge and stand-in processes on free loopback ports.

Shared by the tests, the benchmarks and the demo: each process is started with a
bounded wait for readiness and stopped by its PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import requests

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
# gunicorn's arguments for the bridge: the checkout's two top-level files, or the same
# configuration and app installed with the package (any working directory)
GUNICORN_ARGS = {"gunicorn": ("-c", "gunicorn.conf.py", "wsgi:app"),
                 "package": ("-c", "python:bridge.serve.gunicorn_conf", "bridge.wsgi:app")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode} before {url} "
                               "answered")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


@dataclass
class Process:
    """A started server process with its URL and a log file of its stdout and stderr."""

    url: str
    proc: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    stop_signal: int = signal.SIGTERM

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        """Stop it with its stop signal; past `timeout`, kill its whole process group
        (a gunicorn master and its workers), which it leads since it started."""
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _spawn(cmd: Sequence[str], url: str, probe: str, env: Mapping[str, str] | None,
           log_dir: Path | None, stop_signal: int = signal.SIGTERM,
           cwd: Path | None = None) -> Process:
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="bridge-logs-"))
    log_path = log_dir / f"process-{time.monotonic_ns()}.log"
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(list(cmd), stdout=log_file, stderr=subprocess.STDOUT,
                                env=full_env, cwd=cwd or ROOT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    process = Process(url=url, proc=proc, log_path=log_path, env=dict(env or {}),
                      stop_signal=stop_signal)
    try:
        wait_until_up(url + probe, proc)
    except RuntimeError:
        process.stop()
        raise RuntimeError(f"{' '.join(cmd)} did not start:\n{process.log()[-3000:]}") from None
    return process


def start_bridge(*flags: str, upstream: str | None, workers: int | None = 2,
                 env: Mapping[str, str] | None = None, log_dir: Path | None = None,
                 via: str = "cli", graceful_stop: bool = False,
                 listen_host: str = LOOPBACK, app: str | None = None,
                 cwd: Path | None = None) -> Process:
    """Start the bridge with gevent workers on a free port, in front of `upstream` (None:
    no `-o`, e.g. a bridge whose upstreams all come from `--upstreams`), with `workers`
    workers (None: not given, the bridge's default).

    It listens on `listen_host` (e.g. "0.0.0.0" to test what a non-loopback bind does);
    its URL is always the loopback one.

    via="cli" runs `python -m bridge FLAGS`; via="gunicorn" runs
    `gunicorn -c gunicorn.conf.py APP` (`wsgi:app` unless a test serves its own) and
    via="package" `gunicorn -c python:bridge.serve.gunicorn_conf APP` (`bridge.wsgi:app`),
    both with the flags given as BRIDGE_* variables in `env` (flags are then not
    allowed), in `cwd` (the checkout by default). The bridge is stopped with gunicorn's
    quick shutdown (SIGQUIT) unless `graceful_stop`, which waits for open connections.
    """
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    env = dict(env or {})
    if via in GUNICORN_ARGS:
        if flags:
            raise ValueError(f"via={via!r} takes settings as BRIDGE_* variables in env")
        env.setdefault("BRIDGE_LISTEN", f"{listen_host}:{port}")
        if upstream is not None:
            env.setdefault("BRIDGE_OLLAMA", upstream)
        if workers is not None:
            env.setdefault("BRIDGE_WORKERS", str(workers))
        *config, default_app = GUNICORN_ARGS[via]
        cmd = [sys.executable, "-m", "gunicorn", *config, app or default_app]
    else:
        cmd = [sys.executable, "-m", "bridge", "-l", f"{listen_host}:{port}",
               *(("-o", upstream) if upstream is not None else ()),
               *(("-w", str(workers)) if workers is not None else ()), *flags]
    stop_signal = signal.SIGTERM if graceful_stop else signal.SIGQUIT
    return _spawn(cmd, url, "/health", env, log_dir, stop_signal, cwd)


def start_standin(*flags: str, port: int | None = None, log_dir: Path | None = None) -> Process:
    """Start the Ollama stand-in as its own process."""
    port = port or free_port()
    url = f"http://{LOOPBACK}:{port}"
    cmd = [sys.executable, "-m", "bridge.ollama_standin", "--host", LOOPBACK, "--port",
           str(port), *flags]
    return _spawn(cmd, url, "/api/version", None, log_dir)


def start_server(cmd: Sequence[str], url: str, probe: str = "/",
                 env: Mapping[str, str] | None = None, log_dir: Path | None = None,
                 cwd: Path | None = None, stop_signal: int = signal.SIGTERM) -> Process:
    """Start any other server command (a benchmark's reference server, an installed
    bridge, say) the same way: a bounded wait until `url + probe` answers, stopped by its
    PID."""
    return _spawn(cmd, url, probe, env, log_dir, stop_signal, cwd)


def start_redis(log_dir: Path | None = None, port: int | None = None) -> Process:
    """Start a throwaway `redis-server` on a free loopback port (no persistence, no
    daemon), stopped by its PID like the others; its `url` is its redis:// URL."""
    port = port or free_port()
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="redis-logs-"))
    log_path = log_dir / f"redis-{port}-{time.monotonic_ns()}.log"
    cmd = ["redis-server", "--port", str(port), "--bind", LOOPBACK, "--save", "",
           "--appendonly", "no", "--daemonize", "no", "--dir", str(log_dir)]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    process = Process(url=f"redis://{LOOPBACK}:{port}/0", proc=proc, log_path=log_path)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return process
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            process.stop()
            raise RuntimeError(f"redis-server did not start:\n{process.log()[-2000:]}")
        time.sleep(0.05)
