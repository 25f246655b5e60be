"""Helpers shared by the end-to-end tests: comparing answers and reading bridge logs."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from bridge.serve.processes import ROOT

# Fields the stand-in (like Ollama) randomises or stamps per call.
PER_CALL_FIELDS = frozenset({"id", "created", "created_at"})


def normalized(value: Any) -> Any:
    """`value` (parsed JSON, or an SDK object) without the per-call fields, recursively."""
    if hasattr(value, "model_dump"):  # openai / ollama SDK objects
        value = value.model_dump()
    if isinstance(value, dict):
        return {key: normalized(item) for key, item in value.items()
                if key not in PER_CALL_FIELDS}
    if isinstance(value, (list, tuple)):
        return [normalized(item) for item in value]
    return value


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll `condition` until it is truthy (bounded); returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            assert value, f"timed out after {timeout}s waiting for {what or condition}"
            return value
        time.sleep(0.02)


def keys_command(state_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the `keys` command on a state directory, as an operator would."""
    return subprocess.run([sys.executable, "-m", "bridge", "keys", "--state-dir",
                           str(state_dir), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)


def show_upstream_is_open(bridge: Any, model: str = "qwen3") -> None:
    """One chat request without credentials through a cache bridge: its 2xx shows the
    cache that the upstream lets everyone use `model`, so its stored answers then go to
    every client without a probe (see `bridge.identity.entitlement`)."""
    import uuid

    import requests

    requests.post(bridge.url + "/v1/chat/completions", timeout=30, json={
        "model": model, "messages": [{"role": "user", "content": f"hello {uuid.uuid4().hex}"}],
    }).raise_for_status()
def raw_http(url: str, data: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send `data` as is on a new connection (for what `requests` cannot send: malformed
    chunking, bodies cut short); (status, everything after the headers) once the bridge
    closes the connection. Status 0: it closed without answering."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # refused mid-send: the answer may still be there to read
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body


def http_request(path: str, body: bytes, *headers: str, chunked: bool = False,
                 close: bool = True) -> bytes:
    """The bytes of a POST request with `body` (already chunk-encoded when `chunked`)."""
    lines = [f"POST {path} HTTP/1.1", "Host: bridge", "Content-Type: application/json",
             *headers]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def metric_total(url: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` at `url`/metrics whose labels include `labels`."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url + "/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == name
               and all(sample.labels.get(key) == value for key, value in labels.items()))


def worker_pids(master: int) -> list[int]:
    """The gunicorn master's child processes (its workers)."""
    pids: list[int] = []
    for task in Path(f"/proc/{master}/task").iterdir():
        pids += [int(pid) for pid in (task / "children").read_text().split()]
    return pids
