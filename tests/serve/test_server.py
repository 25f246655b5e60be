"""Running the bridge the way operators do: `gunicorn -c gunicorn.conf.py wsgi:app`
configured by BRIDGE_* variables, the same app as the `deepseek-ollama-bridge` command."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import openai
import requests
from helpers import normalized, wait_for

from bridge.ollama_standin import Fault
from bridge.serve.processes import (
    GUNICORN_ARGS,
    LOOPBACK,
    ROOT,
    free_port,
    start_bridge,
    start_server,
)


def test_gunicorn_with_the_config_file_serves_the_bridge_configured_by_env(standin,
                                                                            tmp_path):
    env = {"BRIDGE_RETRY_ATTEMPTS": "2", "BRIDGE_RETRY_MIN_INTERVAL": "50",
           "BRIDGE_DISABLE_THINK_FILTER": "1",
           "BRIDGE_DEBUG": "1", "BRIDGE_MAX_BODY_SIZE": "2048"}
    with start_bridge(upstream=standin.url, via="gunicorn", env=env, workers=1,
                      log_dir=tmp_path) as process:
        standin.push_fault(Fault("status", status=502), times=2)
        sdk = openai.OpenAI(base_url=process.url + "/v1", api_key="sk-x", max_retries=0)
        got = sdk.chat.completions.create(
            model="qwen3", messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Request-Id": "via-gunicorn-1"})
        assert standin.count() == 3  # BRIDGE_RETRY_ATTEMPTS=2 took effect
        direct = openai.OpenAI(base_url=standin.url + "/v1", api_key="sk-x")
        want = direct.chat.completions.create(model="qwen3",
                                              messages=[{"role": "user", "content": "hi"}])
        assert normalized(got) == normalized(want)
        big = requests.post(process.url + "/api/chat", data=b"{" + b" " * 3000 + b"}",
                            timeout=10)
        assert big.status_code == 413  # BRIDGE_MAX_BODY_SIZE took effect
        log = process.log()
        assert "Using worker: bridge.serve.worker.GeventWorker" in log
        assert "[via-gunicorn-1]" in log  # BRIDGE_DEBUG traces requests with their id
        assert process.stop() == 0


def test_the_packaged_configuration_serves_from_any_directory_with_the_default_workers(
        standin, tmp_path):
    """`gunicorn -c python:bridge.serve.gunicorn_conf bridge.wsgi:app` needs no file of
    the checkout (run elsewhere; tests/deploy/test_install.py runs it installed from a
    wheel); without BRIDGE_WORKERS it runs one worker per CPU and `/status` says so."""
    with start_bridge(upstream=standin.url, via="package", workers=None, cwd=tmp_path,
                      log_dir=tmp_path) as process:
        answer = requests.post(process.url + "/v1/chat/completions", timeout=30, json={
            "model": "qwen3", "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
        expected = os.cpu_count()
        assert requests.get(process.url + "/status", timeout=10).json()["workers"] == expected
        wait_for(lambda: process.log().count("Booting worker with pid") == expected,
                 what=f"{expected} workers booted")


def test_status_gives_the_worker_count_of_a_w_on_gunicorns_own_command_line(standin,
                                                                              tmp_path):
    port = free_port()
    *config, app = GUNICORN_ARGS["package"]
    command = [sys.executable, "-m", "gunicorn", *config, "-w", "3", app]
    env = {"BRIDGE_LISTEN": f"{LOOPBACK}:{port}", "BRIDGE_OLLAMA": standin.url,
           "BRIDGE_WORKERS": "1"}  # gunicorn's -w overrides it
    with start_server(command, f"http://{LOOPBACK}:{port}", "/health", env=env,
                      log_dir=tmp_path, stop_signal=signal.SIGQUIT) as process:
        assert requests.get(process.url + "/status", timeout=10).json()["workers"] == 3


def test_gunicorn_with_a_bad_environment_value_exits_2_with_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT,
        env={"BRIDGE_RETRY_ATTEMPTS": "lots", "PATH": ""}, capture_output=True, text=True,
        timeout=30)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "deepseek-ollama-bridge: error: BRIDGE_RETRY_ATTEMPTS (--retry-attempts): invalid "
        "value 'lots': not a whole number (allowed: 0-1024)"]


def test_graceful_stop_finishes_streams_and_closes_idle_connections_at_once(standin, tmp_path):
    process = start_bridge("--disable-think-filter", upstream=standin.url, workers=1,
                           graceful_stop=True, log_dir=tmp_path)
    try:
        host, port = process.url.removeprefix("http://").split(":")
        idle = socket.create_connection((host, int(port)), timeout=10)
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: bridge\r\n\r\n")
        answer = b""
        while not answer.endswith(b"}\n"):  # the whole /health answer
            answer += idle.recv(65536)
        assert b"200 OK" in answer  # now an idle kept-alive connection
        stream = requests.post(process.url + "/v1/chat/completions", stream=True, timeout=30,
                               headers={"x-standin-token-delay": "0.2"},
                               json={"model": "llama3.2", "stream": True,
                                     "messages": [{"role": "user", "content": "Tell me more"}]})
        chunks = stream.iter_content(chunk_size=None)
        assert next(chunks)
        process.proc.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        assert idle.recv(65536) == b""  # closed by the bridge, not by the keep-alive timeout
        assert time.monotonic() - stopping < 3
        assert b"".join(chunks).rstrip().endswith(b"data: [DONE]")  # the stream finished
        assert process.proc.wait(20) == 0
    finally:
        process.stop()


def long_stream(process):
    """A native stream that takes several seconds (many tokens, 0.3 s apart), started."""
    response = requests.post(process.url + "/api/chat", stream=True, timeout=30,
                             headers={"x-standin-token-delay": "0.3"},
                             json={"model": "llama3.2", "messages": [
                                 {"role": "user", "content": "Tell me more " * 30}]})
    lines = response.iter_lines()
    assert b'"done":false' in next(lines)
    return response, lines


def test_a_stream_outliving_the_graceful_timeout_ends_with_an_error_event(standin, tmp_path):
    process = start_bridge("--graceful-timeout", "2000", upstream=standin.url, workers=1,
                           graceful_stop=True, log_dir=tmp_path)
    try:
        response, lines = long_stream(process)
        process.proc.send_signal(signal.SIGTERM)
        last = json.loads(list(lines)[-1])  # the stream ends; it is not cut mid-line
        assert last == {"error": "the bridge is stopping; the stream was cut before its end"}
        assert process.proc.wait(20) == 0
        log = process.log()
        assert "stream cut: the bridge is stopping" in log
        assert f"outcome=stopped id={response.headers['x-request-id']}" in log
    finally:
        process.stop()


def test_ctrl_c_twice_stops_at_once_as_quietly_as_sigterm(standin, tmp_path):
    process = start_bridge("--disable-think-filter", upstream=standin.url, workers=2,
                           log_dir=tmp_path)
    try:
        _, lines = long_stream(process)
        # What Ctrl-C in a terminal does: the first drains (tests/serve/test_drain.py),
        # the second stops at once.
        os.killpg(process.proc.pid, signal.SIGINT)
        # a person's second Ctrl-C comes later: two signals sent at once merge into one
        wait_for(lambda: "Handling signal: int" in process.log(), what="the first Ctrl-C")
        os.killpg(process.proc.pid, signal.SIGINT)
        assert "error" in json.loads(list(lines)[-1])
        assert process.proc.wait(20) == 0
        log = process.log()
        assert "Traceback" not in log and "SystemExit" not in log, log
    finally:
        process.stop()


def test_make_run_keeps_the_cache_on_when_other_flags_are_given():
    result = subprocess.run(["make", "-n", "run", "ARGS=-o http://127.0.0.1:9 -a 3"], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    (command,) = [line for line in result.stdout.splitlines() if "bridge.serve.demo" in line]
    assert "--enable-cache" in command and "-o http://127.0.0.1:9 -a 3" in command
    without = subprocess.run(["make", "-n", "run", "CACHE_ARGS="], cwd=ROOT,
                             capture_output=True, text=True, timeout=30)
    assert "--enable-cache" not in without.stdout
